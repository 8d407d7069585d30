"""What the command line says besides results: user errors in one line (a config's validation
error names its flag), the versions, and Prefect's run records of a user error said once."""

from __future__ import annotations

import argparse
import logging
import re
from importlib import metadata

from pydantic import ValidationError

import flows  # noqa: F401  (environment defaults first)
from data_catalog.atomic import DiskFullError
from data_catalog.errors import NameNotFound
from flows.cli_args import (
    flag_name,
)
from unet.store.lineage import code_revision, library_versions

# Errors that mean the user's input is wrong (a path, a value, a model name) or the disk is
# full: reported in one line. A KeyError or any other exception is a bug and keeps its
# traceback.
USER_ERRORS = (FileNotFoundError, ValueError, NameNotFound, DiskFullError)


class PrintVersion(argparse.Action):
    """``--version``: the versions, looked up only when asked."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())
        parser.exit()


def version_line() -> str:
    """``segflow 0.1.0 (commit 1a2b3c4d, TensorFlow 2.21.0, Prefect 3.4.0)``."""
    versions = library_versions()
    commit = code_revision()["git_commit"]
    where = f"commit {str(commit)[:8]}, " if commit else ""
    return (
        f"segflow {versions.get('segflow') or 'unknown'} ({where}TensorFlow "
        f"{versions.get('tensorflow')}, Keras {versions.get('keras')}, Prefect "
        f"{metadata.version('prefect')})"
    )


def one_line(error: Exception) -> str:
    """A user error in one line; a config's validation error names the flags it is about."""
    if not isinstance(error, ValidationError):
        return str(error)
    problems = []
    for item in error.errors():
        names = [str(part) for part in item["loc"] if isinstance(part, str)]
        message = item["msg"].removeprefix("Value error, ")
        if names:
            message = f"{flag_name(names[-1])}: {message} (received {item.get('input')!r})"
        problems.append(message)
    return "; ".join(problems)


# Prefect's loggers that report a failed flow or task run with the exception's traceback.
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class UserErrorTracebacks(logging.Filter):
    """Prefect's records of a run failed by a user error: the first keeps its one-line message
    without the traceback; the records that only repeat it (task finished, flow exception,
    flow finished) are dropped, so the user reads the error once in the run's log and once
    from the CLI. Any other exception keeps its traceback."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], USER_ERRORS):
            text = str(record.exc_info[1])
            record.exc_info, record.exc_text = None, None
            if text in self.seen:
                return False
            self.seen.append(text)
            return True
        message = record.getMessage()
        return not any(text and text in message for text in self.seen)


# Prefect's lines about its own machinery, which every command would open and close with:
# kept with --verbose, dropped otherwise (the run's own messages, warnings and errors stay).
BOILERPLATE = re.compile(
    r"^(Finished in state Completed\(\)|Beginning flow run|Created task run|Executing '|"
    r"Starting temporary server|Stopping temporary server|Starting a new flow run)"
)
PREFECT_LOGGERS = ("prefect", "prefect.flow_runs", "prefect.task_runs")


class PrefectBoilerplate(logging.Filter):
    """Drops Prefect's INFO lines about starting servers, runs and tasks (:data:`BOILERPLATE`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not BOILERPLATE.match(record.getMessage())
