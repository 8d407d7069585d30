"""Mapping stored mask values to class indices with an explicit rule.

Rules:
    ``bright`` (binary): 0 is background and the one other value is foreground (0/255, 0/1,
        booleans, 1-bit).
    ``dark`` (binary): the darkest value is foreground (ISBI membranes: 0 = membrane, 255 = cell);
        a mask with a single value is all foreground only when that value is 0.
    a value table (multi-class): ``{stored value: class index}``, background is class 0.
Values a rule does not cover are an error naming the values found; nothing is guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Foreground = Literal["bright", "dark"]


def _show(values: np.ndarray) -> str:
    shown = ", ".join(str(v) for v in values[:8])
    return shown + (", ..." if len(values) > 8 else "")


def reduce_mask_channels(mask: np.ndarray) -> np.ndarray:
    """A mask saved as RGB(A) greyscale -> ``(H, W)``; a coloured mask is an error."""
    if mask.ndim == 3:
        if mask.shape[2] in (2, 4):
            mask = mask[:, :, : mask.shape[2] - 1]
        if not all(np.array_equal(mask[:, :, 0], mask[:, :, c]) for c in range(mask.shape[2])):
            raise ValueError(
                "mask has differing colour channels; expected a greyscale, binary or palette mask"
            )
        mask = mask[:, :, 0]
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got an array of shape {mask.shape}")
    return mask


@dataclass(frozen=True)
class LabelRule:
    """How stored mask values become class indices.

    Attributes:
        foreground: ``"bright"`` or ``"dark"``, used when ``table`` is None.
        table: optional ``{stored value: class}`` for multi-class masks.
        names: optional names of the foreground classes, class 1 first (``lesion``).
    """

    foreground: Foreground = "bright"
    table: tuple[tuple[int, int], ...] | None = None
    names: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        foreground: Foreground = "bright",
        table: dict[int, int] | None = None,
        names: list[str] | tuple[str, ...] | None = None,
    ):
        if foreground not in ("bright", "dark"):
            raise ValueError(
                f"foreground must be 'bright' or 'dark'. Received: foreground={foreground!r}"
            )
        rule = cls(foreground, None)
        if table is not None:
            if not table:
                raise ValueError("the label table is empty; give at least {0: 0, 255: 1}")
            if 0 not in table.values():
                raise ValueError(
                    f"the label table must map some value to background class 0. Received: {table}"
                )
            rule = cls(foreground, tuple(sorted((int(k), int(v)) for k, v in table.items())))
        if names and len(names) != rule.num_classes - 1:
            raise ValueError(
                f"label_names names the {rule.num_classes - 1} foreground class(es), class 1 "
                f"first. Received {len(names)}: {list(names)}"
            )
        return cls(rule.foreground, rule.table, tuple(names or ()))

    @property
    def num_classes(self) -> int:
        return 2 if self.table is None else max(c for _, c in self.table) + 1

    def describe(self) -> dict[str, object]:
        """A JSON-able description, recorded with TFRecords and models."""
        named = {"names": list(self.names)} if self.names else {}
        if self.table is None:
            return {"foreground": self.foreground, **named}
        return {"table": {str(value): cls for value, cls in self.table}, **named}

    def to_classes(self, mask: np.ndarray) -> np.ndarray:
        """Map a stored mask to ``(H, W)`` uint8 class indices.

        Raises:
            ValueError: the mask holds values the rule does not cover (the values are named),
                or is coloured.
        """
        mask = reduce_mask_channels(mask)
        values = np.unique(mask)
        if self.table is not None:
            known = np.array([value for value, _ in self.table])
            unknown = np.setdiff1d(values, known)
            if unknown.size:
                raise ValueError(
                    f"mask values {_show(unknown)} are not in the label table "
                    f"(covers {_show(known)})"
                )
            lookup = np.zeros(int(max(values.max(), known.max())) + 1, np.uint8)
            for value, cls in self.table:
                lookup[value] = cls
            return lookup[mask]
        if len(values) > 2 or (self.foreground == "bright" and len(values) == 2 and values[0] != 0):
            raise ValueError(
                f"foreground '{self.foreground}' expects a binary mask "
                f"({'0 and one other value' if self.foreground == 'bright' else 'two values'}); "
                f"found {len(values)} values ({_show(values)})"
            )
        if self.foreground == "bright":
            return (mask != 0).astype(np.uint8)
        if len(values) == 1:
            return np.full(mask.shape, 1 if values[0] == 0 else 0, dtype=np.uint8)
        return (mask == values[0]).astype(np.uint8)


def mask_to_classes(mask: np.ndarray, foreground: Foreground = "bright") -> np.ndarray:
    """Map a stored binary mask to class indices with the ``bright`` or ``dark`` rule."""
    return LabelRule.build(foreground).to_classes(mask)
