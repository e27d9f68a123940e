"""The one exception type for bad input.

Anything a user can get wrong (a path, a params value, a model name, a weight file) raises
:class:`UserError` with a one-line message that names the problem and the fix. The CLI turns it
into ``error: <message>`` on stderr and exit status 2, without a traceback.
"""

__all__ = ["EXIT_RETRY", "Interrupted", "one_line", "UserError"]


class UserError(Exception):
    """Bad input: the message is shown to the user as is, on one line."""


def one_line(exc: BaseException) -> str:
    """An exception's message as one line (its first non-empty line, whitespace collapsed), or its type's name
    when it has none: for a :class:`UserError` that quotes a library's error."""
    lines = [" ".join(line.split()) for line in str(exc).splitlines()]
    return next((line for line in lines if line), type(exc).__name__)


#: Exit status of a run stopped by SIGTERM after saving its state (sysexits' EX_TEMPFAIL: "try again").
EXIT_RETRY = 75


class Interrupted(Exception):
    """Training stopped on SIGTERM after saving a resumable state; running it again resumes.

    The CLI exits with :data:`EXIT_RETRY`.
    """
