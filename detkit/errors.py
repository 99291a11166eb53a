"""Errors detkit raises for bad input: one sentence that says what and where."""


class DetkitError(ValueError):
    """Bad input to detkit (a config key, a file, a box); the message names what and where."""
