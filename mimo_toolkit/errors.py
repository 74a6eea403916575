"""User-facing errors.

A :class:`UserError` is a mistake the user can fix (a bad recipe, an invalid layout, an
unknown override, a missing tool). The CLI prints its message as one line on stderr and
exits with code 2, without a traceback, before anything is written or submitted.
"""


class UserError(ValueError):
    """A mistake in what the user asked for; the message names the field and the numbers."""


class LayoutError(UserError):
    """A parallel layout that cannot be built (sizes, rank ranges, divisibility)."""
