"""The one exception type for expected failures: the CLI prints its message, never a traceback."""


class UserError(Exception):
    """Something the user can fix: bad input, a missing file, an impossible budget.

    The message says what failed, why, and what to do.
    """
