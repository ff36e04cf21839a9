"""The one error type a user sees for bad input: its message is a single line naming the file and the problem."""

from __future__ import annotations


class LipsyncInputError(Exception):
    """Bad input (media, checkpoint, config) explained in one line; the CLI prints it without a traceback."""

    def __init__(self, path: object, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
