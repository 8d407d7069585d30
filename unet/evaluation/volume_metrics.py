"""Scores per volume: the slices of each volume put back together, then Dice and IoU pooled
over its voxels, HD95 in millimetres (3-D surface distances with the voxel spacing) and the
error of the foreground volume in millilitres.

Slices arrive in any order (TFRecord shards interleave them); each slice's masks are kept
bit-packed (one bit per voxel) until the end, so a split of volumes costs about 2 bits per
voxel of memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from data_catalog.manifest_file import volume_of
from unet.model.metrics import hausdorff95


@dataclass(frozen=True)
class SliceInfo:
    """Where a 2-D case sits: its volume, its index along the slicing axis, and the voxel size
    (mm) between slices, along the slice's rows and along its columns."""

    volume: str
    index: int
    voxel_mm: tuple[float, float, float]


@dataclass
class VolumeScores:
    """Collects each slice's foreground (truth and prediction) and scores every volume."""

    slices: dict[str, SliceInfo]
    _parts: dict[str, dict[int, tuple]] = field(default_factory=dict)

    def add(self, key: str, truth: np.ndarray, prediction: np.ndarray) -> None:
        info = self.slices.get(key)
        if info is None:
            return
        shape = truth.shape
        self._parts.setdefault(info.volume, {})[info.index] = (
            shape,
            np.packbits(truth > 0),
            np.packbits(prediction > 0),
        )

    def table(self) -> pd.DataFrame:
        """One row per volume: ``volume``, ``slices``, ``dice``, ``iou``, ``hd95_mm``,
        ``true_ml``, ``predicted_ml``, ``volume_error_ml``."""
        voxels = {info.volume: info.voxel_mm for info in self.slices.values()}
        rows = [self._score(volume, parts, voxels[volume]) for volume, parts in self._parts.items()]
        return (
            pd.DataFrame(rows).sort_values("volume", ignore_index=True) if rows else pd.DataFrame()
        )

    @staticmethod
    def _score(volume: str, parts: dict[int, tuple], voxel_mm) -> dict[str, object]:
        first, last = min(parts), max(parts)
        shape = next(iter(parts.values()))[0]
        truth = np.zeros((last - first + 1, *shape), bool)
        prediction = np.zeros_like(truth)
        size = int(np.prod(shape))
        for index, (_, true_bits, predicted_bits) in parts.items():
            truth[index - first] = np.unpackbits(true_bits, count=size).reshape(shape).astype(bool)
            prediction[index - first] = (
                np.unpackbits(predicted_bits, count=size).reshape(shape).astype(bool)
            )
        overlap = int(np.count_nonzero(truth & prediction))
        true, predicted = int(truth.sum()), int(prediction.sum())
        total = true + predicted
        voxel_ml = float(np.prod(voxel_mm)) / 1000
        return {
            "volume": volume,
            "slices": len(parts),
            "complete": len(parts) == last - first + 1,
            "dice": 1.0 if total == 0 else 2 * overlap / total,
            "iou": 1.0 if total == 0 else overlap / (total - overlap),
            "hd95_mm": hausdorff95(prediction, truth, voxel_mm),
            "true_ml": true * voxel_ml,
            "predicted_ml": predicted * voxel_ml,
            "volume_error_ml": (predicted - true) * voxel_ml,
        }


def summarize_volumes(table: pd.DataFrame) -> dict[str, object] | None:
    """Means over volumes (HD95 over the volumes where it is defined), and the worst three."""
    if table.empty:
        return None
    return {
        "num_volumes": len(table),
        "dice_mean": float(table["dice"].mean()),
        "iou_mean": float(table["iou"].mean()),
        "hd95_mm_mean": float(table["hd95_mm"].mean()) if table["hd95_mm"].notna().any() else None,
        "hd95_undefined": int(table["hd95_mm"].isna().sum()),
        "volume_error_ml_mean_abs": float(table["volume_error_ml"].abs().mean()),
        "worst": table.nsmallest(3, "dice")["volume"].tolist(),
    }


def slice_infos(manifest: pd.DataFrame) -> dict[str, SliceInfo]:
    """Key -> :class:`SliceInfo` for the volume slices of a manifest (2-D images left out)."""
    if "slice" not in manifest or "voxel_mm" not in manifest:
        return {}
    rows = manifest[manifest["slice"] >= 0]
    return {
        str(row["key"]): SliceInfo(
            volume_of(str(row["key"])),
            int(row["slice"]),
            tuple(float(v) for v in str(row["voxel_mm"]).split("x")),
        )
        for row in rows.to_dict("records")
    }
