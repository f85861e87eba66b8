"""Argument checks shared by the facade and the arena: bad input fails before the disk is
touched, with an exception naming what was wrong."""

import _thread
import os

from ._protocol import NAME_MAX

TYPE_CHECKING = False
if TYPE_CHECKING:
    StrPath = str | os.PathLike[str]

# The longest wait the cores can represent, in seconds (as threading's).
LONGEST_WAIT = _thread.TIMEOUT_MAX


def directory(value: "StrPath", what: str = "base_dir") -> str:
    """A directory argument as a str: non-empty, and not bytes."""
    path = os.fspath(value)
    if not isinstance(path, str):
        raise TypeError(f"{what} must be a str or an os.PathLike of str, not {type(path).__name__}")
    if not path:
        raise ValueError(f"{what} must not be empty (use '.' for the working directory)")
    return path


def name(value: str, what: str, extra: int) -> None:
    """Refuse a name that is not one plain path component, or too long with extra bytes."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if value in ("", ".", "..") or "/" in value or "\0" in value:
        raise ValueError(f"{what} {value!r} is not a plain path component")
    # A character encodes to at most 4 bytes: only long names need encoding to measure.
    if (len(value) + extra) * 4 > NAME_MAX and len(os.fsencode(value)) + extra > NAME_MAX:
        raise ValueError(f"{what} {value!r} is too long for a file name ({NAME_MAX} bytes)")


def remember(checked: dict[str, str], value: str, result: str) -> str:
    """Note what a checked value gave, in a table kept small: a process using endless
    names forgets the old ones."""
    if len(checked) >= 256:
        checked.clear()
    checked[value] = result
    return result


def seconds(value: float | None, what: str, *, allow_none: bool = True) -> None:
    """Refuse a number of seconds the cores cannot represent."""
    if value is None and allow_none:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 <= value <= LONGEST_WAIT
    ):
        forever = "None to wait for ever, or " if allow_none else ""
        raise ValueError(
            f"{what} must be {forever}a number of seconds from 0 to {LONGEST_WAIT:g}, not {value!r}"
        )
