"""The one exception type for bad input.

Anything a user can get wrong (a path, a params value, a model name, a weight file) raises
:class:`UserError` with a one-line message that names the problem and the fix. The CLI turns it
into ``error: <message>`` on stderr and exit status 2, without a traceback.
"""


class UserError(Exception):
    """Bad input: the message is shown to the user as is, on one line."""


#: Exit status of a run stopped by SIGTERM after saving its state (sysexits' EX_TEMPFAIL: "try again").
EXIT_RETRY = 75


class Interrupted(Exception):
    """Training stopped on SIGTERM after saving a resumable state; running it again resumes.

    The CLI exits with :data:`EXIT_RETRY`.
    """
