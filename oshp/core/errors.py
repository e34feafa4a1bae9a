"""One family of errors whose message is meant for the user as it is: the CLI prints it as one line, no traceback.

Each also derives from the built-in error a caller would expect (a missing dataset is a RuntimeError, an unknown class
a KeyError, an unknown model option a TypeError), so code catching those keeps working.
"""

from __future__ import annotations


class OshpError(Exception):
    """An error that names what is wrong and how to fix it."""


class DatasetError(OshpError, RuntimeError):
    """A dataset folder that cannot be used as it is; the message names the file and the fix."""


class UnknownClassError(OshpError, KeyError):
    """A class name or id that the dataset's vocabulary does not have."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class UnknownOptionError(OshpError, TypeError):
    """A model option the method does not have (a TypeError, as for an unknown keyword; the CLI reports it cleanly)."""


class ScheduleError(OshpError, ValueError):
    """A training schedule under which part of a model would never learn (a ValueError: a bad setting)."""
