"""The one error type a user sees for bad input: its message is a single line naming the file and the problem."""

from __future__ import annotations


class LipsyncInputError(Exception):
    """Bad input (media, checkpoint, config) explained in one line; the CLI prints it without a traceback."""

    def __init__(self, path: object, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def one_line(error: BaseException | str, limit: int = 400) -> str:
    """An error's message as one line (its non-blank lines joined), at most `limit` characters; its type's name when
    it says nothing."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text[:limit] or (type(error).__name__ if isinstance(error, BaseException) else "")
