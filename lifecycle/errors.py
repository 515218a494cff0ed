"""User-facing errors.

Anything a user can cause (a missing model, a bad recipe, a target that cannot be reached) raises
:class:`LifecycleError`. The CLI prints its message on one line and exits non-zero; library users
catch it like any other exception.
"""


class LifecycleError(Exception):
    """An error caused by input, with a message meant for the user (one line, no traceback)."""

    exit_code = 2


class UnsupportedArchitectureError(LifecycleError):
    """The model is not in a family that lifecycle knows how to edit."""
