"""Errors the core raises; the CLI prints them as one line and exits 1."""

from __future__ import annotations

__all__ = ["WsisError", "InputError"]


class WsisError(Exception):
    """A problem with the user's input or environment, reported as one line (exit 1)."""


class InputError(WsisError):
    """A fault in an input file, naming the file, the record and the problem.

    ``str(err)`` reads ``FILE: RECORD: PROBLEM`` (or ``FILE: PROBLEM`` when the fault is
    not tied to one record), e.g. ``gt.json: annotation 17 (image 3): bbox has negative width``.
    """

    def __init__(self, path: object, problem: str, record: str | None = None):
        self.path = str(path)
        self.record = record
        self.problem = problem
        where = f"{self.path}: {record}" if record else self.path
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # so an error raised in a worker process arrives whole
        return (type(self), (self.path, self.problem, self.record))
