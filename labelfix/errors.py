"""The one exception type that reaches users: a single clear line, no traceback."""


class LabelfixError(Exception):
    """Bad input or a refused operation. ``str(err)`` is the whole message shown to the
    user, written as ``"<file>: <record>: <what is wrong>"`` where those parts apply."""
