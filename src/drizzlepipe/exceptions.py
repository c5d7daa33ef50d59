"""Exception types raised by drizzlepipe.

Every problem with user input is reported as a :class:`DrizzlepipeInputError` whose
message names the file, the extension (when there is one) and the problem, so that a
user with hundreds of exposures can find the bad one at once.
"""

from __future__ import annotations

__all__ = ["DrizzlepipeError", "DrizzlepipeInputError"]


class DrizzlepipeError(Exception):
    """Base class of all drizzlepipe errors."""


class DrizzlepipeInputError(DrizzlepipeError, ValueError):
    """Bad input: missing or unreadable file, missing keyword, inconsistent arrays, ...

    Parameters
    ----------
    file : str or None
        The file (or association member) at fault; ``None`` when the problem is not
        tied to one file (for example an empty association).
    problem : str
        What is wrong, in words a user can act on.
    extension : str or None
        The FITS extension (``"SCI,2"``) or ASDF path at fault, when there is one.
    """

    def __init__(self, file, problem, extension=None):
        self.file = None if file is None else str(file)
        self.extension = extension
        self.problem = problem
        where = self.file if self.file is not None else "input"
        if extension is not None:
            where = f"{where}[{extension}]"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):
        # Rebuilt from its own arguments (not the message), so that an error raised in a
        # worker process reaches the caller as the same error.
        return type(self), (self.file, self.problem, self.extension)
