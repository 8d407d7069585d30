"""evaluate-flow: score a model on a labelled dataset (every valid case, or one split)."""

from __future__ import annotations

from datetime import datetime

from prefect import flow

from data_catalog.config import PrepareConfig
from tasks.evaluation import evaluate_dataset
from unet.config import EvaluateConfig
from unet.evaluation.result import EvaluationResult


@flow(name="evaluate-flow", flow_run_name=lambda: f"evaluate-{datetime.now():%Y-%m-%d-%H%M%S}")
def evaluate_flow(config: EvaluateConfig, data: PrepareConfig) -> EvaluationResult:
    """Score a model on a labelled dataset; write metrics.json, per_image.csv, overlays."""
    return evaluate_dataset(config, data)
