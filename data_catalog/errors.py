"""Errors that mean the user named something that is not there (a dataset, a model version).

They are ``KeyError`` subclasses, so code that looks names up keeps working, but the command
line reports them as one line (exit 2), while a plain ``KeyError`` is a bug and keeps its
traceback. ``str()`` gives the message without KeyError's quotes.
"""

from __future__ import annotations


class NameNotFound(KeyError):
    """A name the user gave (dataset, split, model version) that does not exist; the message
    names what does exist."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
