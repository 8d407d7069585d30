"""Scoring a model on labelled cases: per-image and per-volume scores, baselines, overlays,
reports, tuning."""
