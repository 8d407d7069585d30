"""One planned training setting and its reason (what every plan rule returns)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlannedSetting:
    """One training setting chosen from the data, and why."""

    name: str
    value: object
    reason: str
