"""The retry policy for lock calls, and what a core does when a lock call fails or a
file vanishes under it: retry decisions and pauses, with their log lines.

The cores make the system calls and run the hot loops; when a call fails they hand the
failure here, so the two cores behave the same.  Pauses go through time.sleep, which
releases the GIL and lets Ctrl-C through.  Loaded on the first failure or wait with a
timeout, or at start-up where a TOIL_THREADING_LOCK_* setting is given.
"""

import errno
import os
import sys
import time
from itertools import pairwise

from . import _checks
from ._errors import LockTimeout, error, fail_if_removed, log, mutex_name
from ._protocol import (
    AGAIN,
    DEFAULT_RETRY_POLICY,
    POLL_CAP,
    POLL_FIRST,
    RETRY_SETTINGS,
    VANISHED_PAUSE_CAP,
    VANISHED_TRIES,
    WAIT,
)

# (max_tries, backoff, max_backoff) for EIO and ENOLCK, as set_lock_retry_policy checked it.
policy: tuple[int, float, float] = DEFAULT_RETRY_POLICY


class LockRetryPolicy(tuple):  # type: ignore[type-arg]
    """(max_tries, backoff, max_backoff): how EIO and ENOLCK from a lock call are retried.

    A plain tuple with names, not a NamedTuple: typing is too slow to import here.
    """

    __slots__ = ()

    def __new__(cls, max_tries: int, backoff: float, max_backoff: float) -> "LockRetryPolicy":
        return tuple.__new__(cls, (max_tries, backoff, max_backoff))

    @property
    def max_tries(self) -> int:
        """Attempts in all before giving up (at least 1)."""
        return self[0]  # type: ignore[no-any-return]

    @property
    def backoff(self) -> float:
        """First pause after a failure, in seconds; doubled after each one."""
        return self[1]  # type: ignore[no-any-return]

    @property
    def max_backoff(self) -> float:
        """Longest pause, in seconds."""
        return self[2]  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return (
            f"LockRetryPolicy(max_tries={self[0]!r}, backoff={self[1]!r}, max_backoff={self[2]!r})"
        )


def lock_retry_policy() -> "LockRetryPolicy":
    """The policy in force for EIO/ENOLCK retries of lock calls."""
    return LockRetryPolicy(*policy)


def set_lock_retry_policy(
    *,
    max_tries: int | None = None,
    backoff: float | None = None,
    max_backoff: float | None = None,
) -> "LockRetryPolicy":
    """Change the EIO/ENOLCK retry policy (the fields not given stay); returns the old one.

    ``max_tries`` counts every attempt (at least 1); ``backoff`` is the first pause in
    seconds, doubled after each failure up to ``max_backoff``.
    """
    old = lock_retry_policy()
    new = LockRetryPolicy(
        old.max_tries if max_tries is None else max_tries,
        old.backoff if backoff is None else backoff,
        old.max_backoff if max_backoff is None else max_backoff,
    )
    tries = new.max_tries
    if isinstance(tries, bool) or not isinstance(tries, int) or not 1 <= tries <= 2**31 - 1:
        raise ValueError(f"max_tries must be a whole number from 1 to 2**31 - 1, not {tries!r}")
    _checks.seconds(new.backoff, "backoff", allow_none=False)
    _checks.seconds(new.max_backoff, "max_backoff", allow_none=False)
    global policy
    policy = (new.max_tries, float(new.backoff), float(new.max_backoff))
    return old


def setting(variable: str, whole: bool, largest: int) -> float | None:
    """The number an environment variable holds, None if it is unset or empty.

    Only plain ASCII decimals are numbers here (no sign, space, underscore, exponent,
    inf, nan or other digits than 0-9, all of which int() and float() take), with a
    fraction for seconds; from 1 (whole) or above 0 (seconds) to largest.  Anything else
    is a ValueError naming the variable.
    """
    text = os.environ.get(variable)
    if not text:
        return None
    digits, point, fraction = text.partition(".")
    plain = text.isascii() and digits.isdigit() and (not point or fraction.isdigit())
    number = float(text) if plain and not (whole and point) else 0.0  # 0: refused below
    if number <= 0 or number > largest:
        wanted = (
            f"a whole number from 1 to {largest}"
            if whole
            else f"a number of seconds above 0 and at most {largest}, like 2 or 0.5"
        )
        raise ValueError(f"{variable}={text!a} is not {wanted} (in ASCII digits)")
    return number


def _refuse(problem: str, instead: str) -> None:
    """A bad retry setting: ValueError naming it, except where raising would stop what
    must go on: in a process the Toil switch runs on this package (every Toil process),
    and in the toil-threading command (whose `doctor` is how an operator finds the bad
    setting).  There it is one line on stderr, saying what is used instead."""
    switch = sys.modules.get("toil_threading_for_toil")
    if switch is not None and getattr(switch, "switched_on", False) is True:
        switch.warn(f"{problem}; {instead}")
    elif _the_command_runs():
        try:
            sys.stderr.write(f"toil-threading: {problem}; {instead}\n")
        except (AttributeError, OSError, ValueError):  # no stderr, or a closed one
            pass
    else:
        raise ValueError(problem) from None


def _the_command_runs() -> bool:
    """Whether this process is the toil-threading command, its console script or
    `python -m toil_threading`: the package is imported before the command's first line."""
    if os.path.basename(sys.argv[0]) == "toil-threading":
        return True
    given = sys.orig_argv
    return "-mtoil_threading" in given or ("-m", "toil_threading") in pairwise(given)


def apply_settings() -> None:
    """Apply the TOIL_THREADING_LOCK_* settings (see setting and _refuse).  A first pause
    longer than the longest is refused too: it would have no effect."""
    given: list[float | None] = []
    for (variable, whole, largest), default in zip(
        RETRY_SETTINGS, DEFAULT_RETRY_POLICY, strict=True
    ):
        try:
            given.append(setting(variable, whole, largest))
        except ValueError as problem:
            _refuse(str(problem), f"the default, {default:g}, is used")
            given.append(None)
    max_tries, backoff, max_backoff = given
    limit = DEFAULT_RETRY_POLICY[2] if max_backoff is None else max_backoff
    if backoff is not None and backoff > limit:
        _refuse(
            f"{RETRY_SETTINGS[1][0]}={backoff:g} is longer than the longest pause,"
            f" {RETRY_SETTINGS[2][0]}={limit:g}{' (its default)' if max_backoff is None else ''}",
            f"the default, {DEFAULT_RETRY_POLICY[1]:g}, is used",
        )
        backoff = None
    if max_tries is None and backoff is None and max_backoff is None:
        return  # Toil's policy stands
    set_lock_retry_policy(
        max_tries=None if max_tries is None else int(max_tries),
        backoff=backoff,
        max_backoff=max_backoff,
    )


class Deadline:
    """When a wait with a timeout started, and when it must end (time.monotonic())."""

    __slots__ = ("started", "until")

    def __init__(self, timeout: float) -> None:
        self.started = time.monotonic()
        self.until = self.started + timeout

    def left(self) -> float:
        return self.until - time.monotonic()


def timed_out(
    deadline: Deadline, path: str | None, identity: tuple[int, int] | None
) -> LockTimeout:
    """The LockTimeout for a wait on the lock file at path, whose device and inode are
    identity (None where no file is there now): its holder is looked up in /proc/locks."""
    waited = time.monotonic() - deadline.started
    from ._locks import exclusive_flock_holders  # reads /proc/locks: only when needed

    holder = None
    if identity is not None:
        holder = (exclusive_flock_holders() or {}).get(identity) or None  # 0: not our PIDs
    return LockTimeout(path, mutex_name(path), round(waited, 6), holder)


def _identity_of(fd: int) -> tuple[int, int] | None:
    try:
        info = os.fstat(fd)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _path_of(fd: int) -> str | None:
    """The kernel's name for a descriptor given without a path (for messages only)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _lock_error_hint(err: int) -> str:
    from ._filesystems import LOCK_ERROR_HINTS

    return LOCK_ERROR_HINTS.get(err, "")


def after_lock_call(
    err: int, block: bool, deadline: Deadline | None, path: str | None, fd: int, counts: list[int]
) -> int:
    """A core's lock call on fd failed with err (EINTR aside): what now?

    counts is the caller's [failures, polls] for this lock, kept up to date here.  Returns
    WAIT (busy, and blocking with no deadline), AGAIN (after polling toward the deadline,
    or after an EIO/ENOLCK back-off), or err itself (busy, and the caller would not wait).
    Raises OSError for any other error and once the EIO/ENOLCK tries are spent, and
    LockTimeout at the deadline.
    """
    if err in (errno.EAGAIN, errno.EACCES):  # busy (EWOULDBLOCK is EAGAIN)
        if not block:
            return err
        if deadline is None:
            return WAIT
        counts[1] += 1
        left = deadline.left()
        if left <= 0:
            raise timed_out(deadline, path or _path_of(fd), _identity_of(fd))
        time.sleep(min(POLL_FIRST * (1 << min(counts[1], 16)), POLL_CAP, left))
        return AGAIN
    if err in (errno.EIO, errno.ENOLCK):
        counts[0] += 1
        lock_failed(err, counts[0], deadline, path, fd)
        return AGAIN
    raise error(err, path)


def lock_failed(
    err: int, failures: int, deadline: Deadline | None, path: str | None, fd: int
) -> None:
    """A lock call on fd failed with EIO or ENOLCK for the failures-th time: pause, or
    give up.

    Gives up (OSError, after a critical log line naming the likely cause) once the
    policy's tries are spent, and with LockTimeout, after waiting out what is left, where
    the pause would pass the deadline.
    """
    where = path or f"fd {fd}"
    max_tries, backoff, max_backoff = policy
    reason = os.strerror(err)
    if failures >= max_tries:
        log(
            50,
            "giving up on the lock of %s after %d tries: %s. %s",
            where,
            failures,
            reason,
            _lock_error_hint(err),
        )
        raise error(err, where)
    pause = min(backoff * 2.0 ** min(failures - 1, 64), max_backoff)
    log(
        40,
        "the lock of %s failed with %s (try %d of %d); retrying in %g s",
        where,
        reason,
        failures,
        max_tries,
        pause,
    )
    if deadline is not None:
        left = deadline.left()
        if left < pause:
            time.sleep(max(left, 0.0))
            raise timed_out(deadline, path or _path_of(fd), _identity_of(fd))
    time.sleep(pause)


def vanished(
    err: int, tries: int, deadline: Deadline | None, dir_fd: int, directory: str, path: str
) -> None:
    """A file in directory (open at dir_fd) went away or clashed under us for the
    tries-th time.

    On a shared filesystem another client changes the directory under our cache (ENOENT,
    ESTALE, even EEXIST without O_EXCL); on any filesystem a waiter finds the file it
    locked unlinked by the holder it waited for: try again after a short pause.  A
    directory that was removed while we had it open is a FileNotFoundError naming it at
    once; running out of tries is the error itself, and running out of time a LockTimeout.
    """
    if err == errno.ENOENT:
        fail_if_removed(dir_fd, directory)
    if deadline is not None and deadline.left() <= 0:
        try:
            info = os.stat(os.path.basename(path), dir_fd=dir_fd, follow_symlinks=False)
            identity: tuple[int, int] | None = (info.st_dev, info.st_ino)
        except OSError:
            identity = None
        raise timed_out(deadline, path, identity)
    if tries >= VANISHED_TRIES:
        raise error(err, path)
    if tries > 1:
        time.sleep(min(POLL_FIRST * (1 << min(tries - 2, 16)), VANISHED_PAUSE_CAP))
