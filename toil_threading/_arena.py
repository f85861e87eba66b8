"""The last-process-standing arena: the last process to leave gets to clean up."""

from __future__ import annotations

import os

from . import _checks, _impl, _retry
from ._protocol import ARENA_MEMBERS_SUFFIX, ARENA_MUTEX_SUFFIX, DENIED, MUTEX_PREFIX

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

    from ._checks import StrPath


class LastProcessStandingArena:
    """Lets a group of processes elect the last one standing to clean up.

    Processes enter and leave, some by dying suddenly.  The last process to leave
    properly gets to do the cleanup; processes entering meanwhile wait until it is done
    and that process has finished leaving.  Always leave after entering (try/finally):
    this is not a context manager.

    On disk: members are locked files in ``base_dir/<name>-arena-members/``; entering
    and leaving are serialised by the mutex ``<name>-arena-lock`` in base_dir.
    """

    def __init__(self, base_dir: StrPath, name: str) -> None:
        base_dir = _checks.directory(base_dir)
        longest = max(len(MUTEX_PREFIX + ARENA_MUTEX_SUFFIX), len(ARENA_MEMBERS_SUFFIX))
        _checks.name(name, "arena name", longest)
        self.base_dir = base_dir
        self.name = name
        self.mutex = name + ARENA_MUTEX_SUFFIX
        self.lockfileDir = os.path.join(base_dir, name + ARENA_MEMBERS_SUFFIX)
        self.lockfileFD: int | None = None
        self.lockfileName: str | None = None

    def enter(self, *, timeout: float | None = None) -> None:
        """Enter the arena; if cleanup is under way, wait until it is finished.

        You may not enter again before leaving.  With ``timeout`` (seconds) on the wait
        for the arena's mutex, TimeoutError if not had in time.
        """
        _checks.seconds(timeout, "timeout")
        if self.lockfileFD is not None:
            raise RuntimeError(f"this process is already in the arena {self.name!r}")
        with self._hold(timeout):
            self.lockfileFD, self.lockfileName = _impl.core.claim_member(self.lockfileDir)

    def _hold(self, timeout: float | None) -> _impl.core.HeldMutex:
        """The arena's mutex, serialising entering and leaving."""
        return _impl.core.HeldMutex(self.base_dir, MUTEX_PREFIX + self.mutex, timeout)

    def leave(self) -> Iterator[bool]:
        """Leave the arena; yields once if this process is the last one standing.

        The loop body runs while the arena's mutex is held, so nobody enters before the
        cleanup is done::

            for _ in arena.leave():
                ...  # we were the last process: clean up
        """
        if self.lockfileFD is None or self.lockfileName is None:
            raise RuntimeError(f"this process is not in the arena {self.name!r}")
        with self._hold(None):
            fd, name = self.lockfileFD, self.lockfileName
            self.lockfileFD = self.lockfileName = None
            staying = _impl.core.leave_arena(fd, self.lockfileDir, name)
            if staying is not None and staying[1] == DENIED:
                _retry.log(
                    30,
                    "cannot tell whether the member %s/%s is alive (another user's file we may"
                    " not open): counting it as alive, so no cleanup now",
                    self.lockfileDir,
                    staying[0],
                )
            if staying is None:
                yield True
                try:
                    os.rmdir(self.lockfileDir)
                except FileNotFoundError:
                    pass
                except OSError as error:
                    _retry.log(
                        30, "could not remove the arena directory %s: %s", self.lockfileDir, error
                    )
