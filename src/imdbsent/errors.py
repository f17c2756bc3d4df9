"""The one exception type for a user's mistake: the CLI prints its message as one line."""


class UserError(Exception):
    """Something the user can fix: a missing file, a bad value, bad input. Never a bug."""
