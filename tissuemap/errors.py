"""The one exception type for problems a user can fix (bad input, bad options)."""


class InputError(Exception):
    """A user mistake. The command line prints its message on one line and exits non-zero, without a traceback.

    Messages name the file, the row or column, and what to do, e.g.
    ``samplesheet.csv: row 3, column 'sample': 'a b' has a space; use letters, digits, '_', '-' or '.'``.
    """
