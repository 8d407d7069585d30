"""The training task: one log line per epoch and a progress artifact in the dashboard."""

from __future__ import annotations

from prefect import task

from tasks.reporting import Progress, publish_table, run_logger
from unet.config import TrainConfig


@task(name="train-unet")
def train_unet(
    tfrecord_dir: str, run_dir: str, config: TrainConfig, lineage: dict[str, object]
) -> dict[str, object]:
    """Train on the TFRecord set, keeping the best epoch by validation foreground Dice.

    Returns:
        The training summary (model path, version, best epoch and score, seconds).
    """
    from unet.training import train_model

    logger = run_logger()
    progress = Progress("training-progress", "Epochs completed")

    def report(epoch: int, epochs: int, numbers: dict[str, float]) -> None:
        logger.info(
            "epoch %d/%d: loss %.4f, dice %.4f, val dice %.4f (%.1f s)",
            epoch,
            epochs,
            numbers.get("loss", float("nan")),
            numbers.get("dice_fg", float("nan")),
            numbers.get("val_dice_fg", float("nan")),
            numbers.get("seconds", float("nan")),
        )
        progress.update(epoch, epochs)

    summary = train_model(tfrecord_dir, run_dir, config, lineage=lineage, on_epoch_end=report)
    publish_table("training-summary", [summary], "Best checkpoint of this training run")
    return summary
