"""Command-line flags made from config fields: one flag per setting, with its type, choices,
default and description (``--val-fraction`` -> ``PrepareConfig.val_fraction``)."""

from __future__ import annotations

import argparse
import os
import sys
import types
import typing

import flows  # noqa: F401  (environment defaults first)
from unet.config.parts import StagedConfig


def parse_label_table(text: str) -> dict[int, int]:
    """``"0:0,128:1,255:2"`` -> ``{0: 0, 128: 1, 255: 2}``."""
    try:
        pairs = [item.split(":") for item in text.split(",") if item.strip()]
        return {int(value): int(cls) for value, cls in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected stored-value:class pairs like 0:0,128:1,255:2. Received: {text!r}"
        ) from None


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(
    parser: argparse.ArgumentParser,
    config_class: type,
    skip: tuple[str, ...] = (),
    required: tuple[str, ...] = (),
    planned: frozenset[str] = frozenset(),
) -> None:
    """Add one flag per field of a pydantic config, with its type, choices and description."""
    group = parser.add_argument_group(config_class.__name__)
    for name, field in config_fields(config_class).items():
        if name in skip or any(
            flag_name(name) in action.option_strings for action in parser._actions
        ):
            continue
        annotation = field.annotation
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        kwargs: dict[str, object] = {"dest": name, "default": None, "help": field.description}
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(annotation) is dict:  # on the command line: 0:0,128:1
            kwargs.update(type=parse_label_table, metavar="VALUE:CLASS,...")
            kwargs["help"] = f"{field.description} On the command line: 0:0,128:1."
        elif typing.get_origin(annotation) is list:
            kwargs.update(type=typing.get_args(annotation)[0], nargs="+")
        elif typing.get_origin(annotation) is typing.Literal:
            choices = typing.get_args(annotation)
            kwargs.update(choices=choices, type=type(choices[0]))
        else:
            kwargs["type"] = annotation
        if name in planned:
            kwargs["help"] = f"{field.description} Default: planned from the data (segflow plan)."
        elif not field.is_required() and field.default is not None:
            kwargs["help"] = f"{field.description} Default: {field.default}."
        if name in required:
            kwargs["required"] = True
        if isinstance(kwargs["help"], str):  # argparse formats help with %: "99.9%" must stay
            kwargs["help"] = kwargs["help"].replace("%", "%%")
        group.add_argument(flag_name(name), **kwargs)


def config_fields(config_class: type) -> dict:
    """A config's settings by flag name: a :class:`StagedConfig`'s parts' fields flat."""
    if issubclass(config_class, StagedConfig):
        return config_class.flat_fields()
    return config_class.model_fields


def config_from_args(config_class: type, args: argparse.Namespace, **values: object):
    """Build a config from the flags that were given (others keep the config's defaults)."""
    given = {
        name: getattr(args, name)
        for name in config_fields(config_class)
        if getattr(args, name, None) is not None
    }
    return config_class(**{**given, **values})


def start_tensorflow(args: argparse.Namespace) -> None:
    """Import TensorFlow once the command's arguments are checked: with file descriptor 2
    pointed at /dev/null meanwhile (its C++ start-up lines, oneDNN and CUDA drivers, bypass
    every log setting), unless ``--verbose``. An import error still reaches the user."""
    if getattr(args, "verbose", False) or "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                # deferred: imports TensorFlow (4 s), only for the commands that need it
                import tensorflow  # noqa: F401
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)
