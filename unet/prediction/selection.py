"""Which files under the input folder are inputs: ``--include`` / ``--exclude`` glob patterns,
and by default not the masks that sit beside the scans under the training data's mask suffix
(a folder of ``case.png`` + ``case_mask.png`` is segmented as its scans only)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

from unet.config import PredictConfig
from unet.store.lineage import trained_prepare_config

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputSelection:
    """Glob patterns on an input's path relative to the input folder (or its file name):
    kept when it matches an ``include`` pattern (or there are none) and no ``exclude`` one.
    ``reason`` says where the exclusions came from, for the run's log."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    reason: str = ""

    def select(self, files: list[Path], input_dir: Path) -> tuple[list[Path], str]:
        """The files kept, and how many were left out and why ("" when none; logged once)."""
        kept = [path for path in files if self.keeps(path.relative_to(input_dir).as_posix())]
        gone = len(files) - len(kept)
        files_word = f"{gone} file{'' if gone == 1 else 's'}"
        if gone:
            logger.info("%s left out of the inputs: %s", files_word, self)
        return kept, f"{files_word} left out ({self})" if gone else ""

    def __str__(self) -> str:
        parts = [f"--include {' '.join(self.include)}"] if self.include else []
        if self.exclude:
            parts.append(f"excluded {' '.join(self.exclude)} ({self.reason})")
        return "; ".join(parts)

    def keeps(self, relative: str) -> bool:
        name = PurePosixPath(relative).name

        def matches(pattern: str) -> bool:
            return fnmatch(relative, pattern) or fnmatch(name, pattern)

        if self.include and not any(matches(p) for p in self.include):
            return False
        return not any(matches(p) for p in self.exclude)


def training_mask_patterns(model_dir: Path) -> tuple[str, ...]:
    """``*_mask.*`` and ``*_mask_*`` when the model was trained on masks named by the suffix
    ``_mask`` (its lineage's prepare config); none otherwise."""
    suffix = (trained_prepare_config(model_dir) or {}).get("mask_suffix")
    return (f"*{suffix}.*", f"*{suffix}_*") if suffix else ()


def input_selection(config: PredictConfig, model_dir: Path) -> InputSelection:
    """The run's selection: the user's patterns; without ``--exclude``, the training masks'."""
    include = tuple(config.include or ())
    if config.exclude is not None:
        return InputSelection(include, tuple(p for p in config.exclude if p), "--exclude")
    patterns = training_mask_patterns(model_dir)
    reason = "the training masks' names (--exclude '' segments them too)" if patterns else ""
    return InputSelection(include, patterns, reason)
