"""User-facing errors: the CLI prints their message and exits with status 2, no traceback."""


class BenchError(Exception):
    """An error the user can fix (bad input, missing data, unknown name).

    The message must say what is wrong and, where it applies, which file and what to do.
    """
