"""LockTimeout: a wait with a timeout that ran out, and what the caller needs to know of it."""

import os

from ._protocol import ARENA_MUTEX_SUFFIX, MUTEX_PREFIX


class LockTimeout(TimeoutError):
    """A lock was not had within the time given: a ``TimeoutError`` that says which lock,
    how long was waited and, where this machine can tell, who holds it.

    ``path``: the lock file (None for a descriptor passed to ``safe_lock``); ``name``: the
    mutex's name, or the arena's for an arena's wait (None for a descriptor); ``waited``:
    seconds from the start of the wait; ``holder``: the PID holding the lock, where
    /proc/locks shows one in this process's PID namespace, else None.
    """

    def __init__(
        self, path: str | None, name: str | None, waited: float, holder: int | None = None
    ) -> None:
        super().__init__()
        self.path, self.name, self.waited, self.holder = path, name, waited, holder

    def __str__(self) -> str:
        if self.name is not None:
            waiting = f"{self._kind()} {self.name!r} ({self.path})"
        else:
            waiting = f"the lock on {self.path}"
        held = "the holder is unknown" if self.holder is None else f"held by PID {self.holder}"
        return f"timed out after {self.waited:.3g} s waiting for {waiting}: {held}"

    def _kind(self) -> str:
        is_arena_mutex = self.path is not None and os.path.basename(self.path) == (
            f"{MUTEX_PREFIX}{self.name}{ARENA_MUTEX_SUFFIX}"
        )
        return "arena" if is_arena_mutex else "mutex"

    def __repr__(self) -> str:
        return (
            f"LockTimeout(path={self.path!r}, name={self.name!r}, waited={self.waited!r},"
            f" holder={self.holder!r})"
        )

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return type(self), (self.path, self.name, self.waited, self.holder)


def mutex_name(path: str | None) -> str | None:
    """The mutex a lock file path is the file of, None for another file."""
    filename = os.path.basename(path or "")
    return filename[len(MUTEX_PREFIX) :] if filename.startswith(MUTEX_PREFIX) else None
