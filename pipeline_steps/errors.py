"""The one exception type for bad input.

Anything a user can get wrong (a path, a params value, a model name, a weight file) raises
:class:`UserError` with a one-line message that names the problem and the fix. The CLI turns it
into ``error: <message>`` on stderr and exit status 2, without a traceback.
"""


class UserError(Exception):
    """Bad input: the message is shown to the user as is, on one line."""
