"""The one exception type for problems the user can fix (bad input, missing files, wrong flags).

The CLI prints `error: <message>` on one line and exits non-zero for these; anything else is a bug.
"""


class AtssError(Exception):
    """A known, user-facing error. The message must name the problem and, where it helps, the fix."""

    exit_code = 2
