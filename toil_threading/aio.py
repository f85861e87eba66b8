"""asyncio entry points: the mutex and the arena, waited for without blocking the event loop.

::

    from toil_threading import aio

    async with aio.global_mutex(base_dir, "jobs"):
        ...

    arena = aio.LastProcessStandingArena(base_dir, "pool")
    await arena.enter()
    try:
        ...
    finally:
        async for _ in arena.leave():
            ...  # we were the last one out: clean up

How it waits: by polling, with no thread.  Each try is one non-blocking attempt of the
synchronous API (``global_mutex(..., timeout=0)``, ``enter(timeout=0)``, ``leave(timeout=0)``),
made on the event loop; while the lock is busy the task sleeps (``asyncio.sleep``) 1 ms, then
2, 4 and 8 ms, then 10 ms between tries, the pauses of the synchronous API's timed waits.

What it costs, per waiting task: about 90 tries a second once it has waited 15 ms, each 14
system calls (the directory and the lock file opened, the lock tried, and /proc/locks read
for the holder a LockTimeout would name): about 1,300 system calls a second.  On a 2-CPU
virtual machine (compiled core, tmpfs) a try takes about 50 us of CPU: a lone waiting task
uses about 4% of a CPU, and each of twenty waiting together about 0.5%.  A release is
noticed at the waiter's next try: 6 to 7 ms later in the median, 10.4 ms at the 90th percentile,
where a waiter blocked in the kernel (the synchronous API) is woken within 0.2 ms; so under
steady contention from such waiters a polling one waits longer.  Measured by bench/aio.py
(bench/results-aio.txt).

Timeouts count the whole wait: LockTimeout says how long that was, and the holder's PID
where this machine can tell.  A task is only ever cancelled at an await, and the awaits
come between tries, when nothing is held, or in the ``async with`` body, whose exit lets
the mutex go.  A cancelled ``enter()`` has not entered.  A cancelled ``leave()`` is still in
the arena if it was waiting for the arena's mutex (``leave()`` may be called again);
otherwise it was the last one out, cancelled in its cleanup (the loop body), and is fully
out: the arena's mutex goes when the interrupted iteration is closed, which asyncio does
on the loop's next turn (``contextlib.aclosing`` does it at once).  Arguments are checked
by the synchronous API, in its words, before anything touches the disk.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import TypeVar

import toil_threading

from ._protocol import POLL_CAP, POLL_FIRST

TYPE_CHECKING = False
if TYPE_CHECKING:
    import os
    from types import TracebackType

    StrPath = str | os.PathLike[str]

__all__ = ["LastProcessStandingArena", "global_mutex"]

_Had = TypeVar("_Had")


async def _poll(attempt: Callable[[], _Had], timeout: float | None) -> _Had:
    """What attempt() returns, trying it again after a pause for as long as it raises
    LockTimeout (busy), within timeout seconds (None: for ever)."""
    started = time.monotonic()
    pause = POLL_FIRST
    while True:
        try:
            return attempt()
        except toil_threading.LockTimeout as busy:
            waited = time.monotonic() - started
            if timeout is not None and waited >= timeout:
                raise toil_threading.LockTimeout(
                    busy.path, busy.name, round(waited, 6), busy.holder
                ) from None
        left = pause if timeout is None else timeout - waited
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, POLL_CAP)


class _HeldMutex(AbstractAsyncContextManager[None]):
    """What global_mutex returns: holds the mutex while entered (see global_mutex)."""

    def __init__(self, attempt: AbstractContextManager[None], timeout: float | None) -> None:
        self._attempt, self._timeout = attempt, timeout

    async def __aenter__(self) -> None:
        await _poll(self._attempt.__enter__, self._timeout)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: "TracebackType | None",
    ) -> None:
        self._attempt.__exit__(exc_type, exc, traceback)


def global_mutex(
    base_dir: "StrPath", mutex: str, *, timeout: float | None = None
) -> AbstractAsyncContextManager[None]:
    """Async context manager that holds the named mutex, scoped to base_dir, while entered.

    The same mutex as toil_threading.global_mutex (processes using either exclude each
    other), waited for without blocking the event loop (see the module's docstring).
    With ``timeout`` (seconds), LockTimeout if not had in time.  Bad arguments raise here,
    as the synchronous one's do, before anything touches the disk.
    """
    toil_threading.global_mutex(base_dir, mutex, timeout=timeout)  # its checks, touching nothing
    return _HeldMutex(toil_threading.global_mutex(base_dir, mutex, timeout=0), timeout)


class LastProcessStandingArena:
    """toil_threading.LastProcessStandingArena, with waits that do not block the event loop.

    The same arena on disk (members of either kind count alike).  Always leave after
    entering (try/finally); each object is one member, so tasks of one process that enter
    with their own objects are members apart.
    """

    def __init__(self, base_dir: "StrPath", name: str) -> None:
        self._arena = toil_threading.LastProcessStandingArena(base_dir, name)
        self.base_dir = self._arena.base_dir
        self.name = self._arena.name

    @property
    def lockfileFD(self) -> int | None:
        """The member file's descriptor while this object is in the arena, else None."""
        return self._arena.lockfileFD

    @property
    def lockfileName(self) -> str | None:
        """The member file's name while this object is in the arena, else None."""
        return self._arena.lockfileName

    async def enter(self, *, timeout: float | None = None) -> None:
        """Enter the arena; if cleanup is under way, wait until it is finished.

        You may not enter again before leaving.  With ``timeout`` (seconds) on the wait
        for the arena's mutex, LockTimeout if not had in time.
        """
        self._check(timeout)
        await _poll(lambda: self._arena.enter(timeout=0), timeout)

    async def leave(self, *, timeout: float | None = None) -> AsyncIterator[bool]:
        """Leave the arena; yields once, True, if this is the last member standing.

        The loop body runs while the arena's mutex is held, so nobody enters before the
        cleanup is done::

            async for _ in arena.leave():
                ...  # we were the last one out: clean up

        With ``timeout`` (seconds) on the wait for the arena's mutex, LockTimeout if not
        had in time: this object is then still in the arena, and may leave again.
        """
        self._check(timeout)
        # Each try starts the synchronous leave(); a busy mutex ends it before it let go
        # of the member.  Once it runs, its steps up to the cleanup are taken in one go.
        leaving = await _poll(lambda: _started(self._arena.leave(timeout=0)), timeout)
        if leaving is None:
            return
        yield True
        next(leaving, None)  # the rest of the synchronous leave: the directory goes, and the mutex

    def _check(self, timeout: float | None) -> None:
        """Refuse a timeout as the synchronous arena does, in its words (the arena's own
        mutex checks it, touching nothing)."""
        toil_threading.global_mutex(self._arena.base_dir, self._arena.mutex, timeout=timeout)


def _started(leaving: Iterator[bool]) -> Iterator[bool] | None:
    """The synchronous leave run up to its yield: the generator, waiting there for the
    cleanup; None if it ran to its end (this was not the last member)."""
    return leaving if next(leaving, False) else None
