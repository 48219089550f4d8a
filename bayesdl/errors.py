"""`BayesdlError`: a problem the user can fix (bad input, unknown name, failing model).

The CLI prints its message as one line on stderr and exits with code 2.
"""


class BayesdlError(Exception):
    """A user-facing error whose message names the problem."""
