"""The one exception type users see.

Every user error (bad path, bad file, bad option combination) raises `HmdfError`; the CLI turns
it into a single `error: ...` line and exit code 2. Anything else is a bug and keeps its traceback.
"""


class HmdfError(Exception):
    """A problem the user can fix: the message is one sentence that says what and where."""


class HmdfWarning(UserWarning):
    """Something that runs but may not give what the user expects (`warnings.warn`; the CLI prints
    each as one `warning: ...` line on stderr)."""
