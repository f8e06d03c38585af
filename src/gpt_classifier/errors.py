"""One exception type for every problem a user can fix, so entry points can print one line."""


class GPTClassifierError(Exception):
    """A user-facing error: the message names the problem and the fix."""
