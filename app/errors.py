"""The one exception type for bad user input (a path, a config value, a checkpoint)."""


class UserInputError(Exception):
    """Raised for input the user can fix; entry points print it as one line (`error: ...`) and exit with status 2.

    The message names the bad value and the fix.
    """
