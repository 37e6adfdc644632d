"""The one exception minila raises for bad user input.

Its message is a single line meant for the person at the terminal: what was wrong,
and what to do about it. Bugs inside minila raise ordinary Python exceptions instead.
"""


class MinilaError(Exception):
    """A user-facing error: a bad path, a checkpoint minila cannot load, an unknown option."""
