"""The one exception type for problems the user can fix (bad input, missing files, wrong flags).

The CLI prints `error: <message>` on one line and exits non-zero for these; anything else is a bug.

Library code names its own parameters, never the CLI's flags: `param("train_ann")` marks a
parameter name inside a message. `str(exc)` shows it as the name (`train_ann`), which is what
a caller of the Python function passed; the CLI shows it as the flag that set it
(`--train-ann`) through `exc.render(to_flag)` (atss_cli/terminal.py), so the one-line errors
of the commands name what the user typed.
"""

from __future__ import annotations

from collections.abc import Callable

# Private-use code points: they never occur in a path or a value a user gives.
_OPEN, _CLOSE = "\ue000", "\ue001"


def param(name: str) -> str:
    """A parameter's name inside an error message (see the module docstring)."""
    return f"{_OPEN}{name}{_CLOSE}"


def render(text: str, to_flag: Callable[[str], str] | None = None) -> str:
    """`text` with each marked parameter as its name, or as `to_flag(name)`."""
    if _OPEN not in text:
        return text
    out, rest = [], text
    while _OPEN in rest:
        before, _, after = rest.partition(_OPEN)
        name, _, rest = after.partition(_CLOSE)
        out.append(before)
        out.append(to_flag(name) if to_flag is not None else name)
    out.append(rest)
    return "".join(out)


class AtssError(Exception):
    """A known, user-facing error. The message must name the problem and, where it helps, the fix."""

    exit_code = 2

    def __str__(self) -> str:
        return render(super().__str__())

    def render(self, to_flag: Callable[[str], str]) -> str:
        """The message with each marked parameter shown as `to_flag(name)`."""
        return render(super().__str__(), to_flag)
