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


def path(value: "StrPath", what: str = "base_dir") -> str:
    """A path argument as a str: non-empty, not bytes, without a NUL."""
    path = os.fspath(value)
    if not isinstance(path, str):
        raise TypeError(f"{what} must be a str or an os.PathLike of str, not {type(path).__name__}")
    if not path:
        raise ValueError(f"{what} must not be empty (use '.' for the working directory)")
    if "\0" in path:
        raise ValueError(f"{what} must not contain a NUL character: {path!r}")
    return path


def descriptor(value: object) -> int:
    """A file descriptor argument as an int: an int from 0 up (not a bool), or an object
    with fileno(), as fcntl takes (and Toil's safe_lock with it)."""
    if not isinstance(value, int) and hasattr(value, "fileno"):
        value = value.fileno()
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"fd must be a file descriptor (an int) or have a fileno(), not {type(value).__name__}"
        )
    if not 0 <= value <= _INT_MAX:
        raise ValueError(f"fd must be a file descriptor from 0 to {_INT_MAX}, not {value}")
    return int(value)


_INT_MAX = 2**31 - 1  # a descriptor is a C int


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
