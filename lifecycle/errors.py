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


class TrainingInterrupted(LifecycleError):
    """Training stopped on SIGINT/SIGTERM after writing a resumable checkpoint."""

    def __init__(self, step: int, signum: int, checkpoint: str | None, resumable: bool = True, hint: str | None = None):
        import signal

        self.step, self.signum, self.checkpoint = step, signum, checkpoint
        self.exit_code = 128 + int(signum)  # 130 for SIGINT, 143 for SIGTERM, as shells report them
        name = signal.Signals(signum).name
        if hint:
            message = f"interrupted ({name}) at step {step}; {hint}"
        elif resumable:
            message = f"interrupted ({name}) at step {step}; resume with --resume"
        else:
            message = f"interrupted ({name}) at step {step}; this run does not resume: run it again"
        super().__init__(message)
