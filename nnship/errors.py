"""The one error type that the CLI turns into a one-line message and a non-zero exit."""


class NnshipError(Exception):
    """A problem with the user's input or files, explained in one line."""
