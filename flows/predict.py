"""predict-flow: segment every image in a folder; evaluate-flow: score a model on folders."""

from __future__ import annotations

from datetime import datetime

from prefect import flow

from data_catalog.config import PrepareConfig
from tasks.evaluation import evaluate_dataset
from tasks.prediction import segment_folder
from unet.config import EvaluateConfig, PredictConfig


@flow(name="predict-flow", flow_run_name=lambda: f"predict-{datetime.now():%Y-%m-%d-%H%M%S}")
def predict_flow(config: PredictConfig) -> dict[str, object]:
    """Write one mask per input under ``config.output_dir`` and ``report.csv``.

    Returns:
        ``report`` path and counts of inputs, successes and errors.
    """
    return segment_folder(config)


@flow(name="evaluate-flow", flow_run_name=lambda: f"evaluate-{datetime.now():%Y-%m-%d-%H%M%S}")
def evaluate_flow(config: EvaluateConfig, data: PrepareConfig) -> dict[str, object]:
    """Score a model on a labelled dataset; write metrics.json, per_image.csv, overlays."""
    return evaluate_dataset(config, data)
