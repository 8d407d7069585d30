"""A prediction's slice series kept whole: in one shard, and segmented again whole when an
earlier run finished only part of one (see :mod:`unet.inference.series`)."""

from __future__ import annotations

from unet.inference.series_names import series_position


def series_units(inputs: list, whole_series: bool) -> list[list]:
    """The inputs cut into what must be segmented together: each slice series (consecutive,
    as the inputs are sorted) in one, every other input alone."""
    units: list[list] = []
    current = None
    for item in inputs:
        position = series_position(item.relative) if whole_series and not item.volume else None
        name = position.series if position is not None else None
        if name is not None and name == current:
            units[-1].append(item)
        else:
            units.append([item])
        current = name
    return units


def without_unfinished_series(inputs: list, done: dict[str, dict]) -> dict:
    """``done`` without the inputs of a series of which an earlier run finished only some
    (their masks were made without the rest of their series)."""
    unfinished = {
        item.relative
        for unit in series_units(inputs, True)
        if len(unit) > 1 and not all(member.relative in done for member in unit)
        for item in unit
    }
    return {name: row for name, row in done.items() if name not in unfinished}
