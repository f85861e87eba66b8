"""Cross-process coordination through file locks, compatible with Toil's toil.lib.threading.

Processes running this package and processes running Toil's own module can share one
coordination directory: the files and locks on disk are the same.  The system calls are
made by a compiled core where one was built (``ACCELERATED`` says so), by a pure-Python
twin otherwise.

This module validates arguments and delegates; each concern lives in a module of its
own (see the README's "How the code is laid out").
"""

# Importing this package must stay cheap (a fresh interpreter calling cpu_count() should
# cost little more than a bare one), so nothing here imports typing, logging, threading
# or collections at import time; what is not needed for that loads on first use.
import os
import sys

from . import _checks, _impl
from ._cpu import cpu_count, explain_cpu_count, parse_quota_cgroups1, parse_quota_cgroups2
from ._cpu_limits import CpuCount, CpuLimit
from ._protocol import DEFAULT_RETRY_POLICY, LOGGER_NAME, MUTEX_PREFIX

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from contextlib import AbstractContextManager
    from types import ModuleType

    from ._arena import LastProcessStandingArena
    from ._checks import StrPath
    from ._exceptional import ExceptionalThread
    from ._filesystems import FilesystemReport
    from ._names import (
        collect_process_name_garbage,
        current_process_name_for,
        current_process_name_lock,
        destroy_all_process_names,
        get_process_name,
        process_name_exists,
    )
    from ._timeout import LockTimeout

    ACCELERATED: bool
    logger: "logging.Logger"

__version__ = "0.2.0"

__all__ = [
    "ACCELERATED",
    "CpuCount",
    "CpuLimit",
    "ExceptionalThread",
    "FilesystemReport",
    "LastProcessStandingArena",
    "LockRetryPolicy",
    "LockTimeout",
    "collect_process_name_garbage",
    "cpu_count",
    "current_process_name_for",
    "current_process_name_lock",
    "destroy_all_process_names",
    "ensure_filesystem_lockable",
    "explain_cpu_count",
    "filesystem_report",
    "get_process_name",
    "global_mutex",
    "install_into_toil",
    "lock_retry_policy",
    "locked_file_is",
    "logger",
    "parse_quota_cgroups1",
    "parse_quota_cgroups2",
    "process_name_exists",
    "safe_lock",
    "safe_unlock_and_close",
    "set_lock_retry_policy",
]

# Names loaded on first use, and the module that has each.
_LAZY = {
    "ExceptionalThread": "_exceptional",
    "LastProcessStandingArena": "_arena",
    "LockTimeout": "_timeout",
    "FilesystemReport": "_filesystems",
    "collect_process_name_garbage": "_names",
    "current_process_name_for": "_names",
    "current_process_name_lock": "_names",
    "destroy_all_process_names": "_names",
    "get_process_name": "_names",
    "process_name_exists": "_names",
}


def __getattr__(name: str) -> object:
    value: object
    if name == "ACCELERATED":
        return _impl.accelerated()  # never cached: it follows a switch of the core
    if name == "logger":
        import logging

        value = logging.getLogger(LOGGER_NAME)
    elif name in _LAZY:
        value = getattr(_submodule(_LAZY[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def _submodule(name: str) -> "ModuleType":
    import importlib

    return importlib.import_module(f"{__name__}.{name}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
    from . import _retry

    return LockRetryPolicy(*_retry.policy)


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
    from . import _retry

    _retry.policy = (new.max_tries, float(new.backoff), float(new.max_backoff))
    return old


# The retry settings read at import, in LockRetryPolicy's order: each variable, whether it
# holds a whole number (else seconds), and the largest value it may hold.
_RETRY_SETTINGS = (
    ("TOIL_THREADING_LOCK_MAX_TRIES", True, 1000),
    ("TOIL_THREADING_LOCK_BACKOFF", False, 3600),
    ("TOIL_THREADING_LOCK_MAX_BACKOFF", False, 3600),
)


def _setting(variable: str, whole: bool, largest: int) -> float | None:
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
    """A bad retry setting: ValueError naming it, except in a process the Toil switch runs
    on this package, where it must not stop every Toil process: there it is one line on
    stderr (as the switch reports), saying what is used instead."""
    switch = sys.modules.get("toil_threading_for_toil")
    if switch is None or getattr(switch, "switched_on", False) is not True:
        raise ValueError(problem) from None
    switch.warn(f"{problem}; {instead}")


def _policy_from_environment() -> None:
    """Apply the TOIL_THREADING_LOCK_* settings (see _setting and _refuse).  A first pause
    longer than the longest is refused too: it would have no effect."""
    given: list[float | None] = []
    for (variable, whole, largest), default in zip(
        _RETRY_SETTINGS, DEFAULT_RETRY_POLICY, strict=True
    ):
        try:
            given.append(_setting(variable, whole, largest))
        except ValueError as problem:
            _refuse(str(problem), f"the default, {default:g}, is used")
            given.append(None)
    max_tries, backoff, max_backoff = given
    limit = DEFAULT_RETRY_POLICY[2] if max_backoff is None else max_backoff
    if backoff is not None and backoff > limit:
        _refuse(
            f"{_RETRY_SETTINGS[1][0]}={backoff:g} is longer than the longest pause,"
            f" {_RETRY_SETTINGS[2][0]}={limit:g}{' (its default)' if max_backoff is None else ''}",
            f"the default, {DEFAULT_RETRY_POLICY[1]:g}, is used",
        )
        backoff = None
    if max_tries is None and backoff is None and max_backoff is None:
        return  # Toil's policy stands (and the module that keeps it need not load yet)
    set_lock_retry_policy(
        max_tries=None if max_tries is None else int(max_tries),
        backoff=backoff,
        max_backoff=max_backoff,
    )


_policy_from_environment()


def safe_lock(
    fd: int, block: bool = True, shared: bool = False, *, timeout: float | None = None
) -> None:
    """Take an flock on fd, retrying EIO and ENOLCK with back-off.

    Raises OSError with EACCES or EAGAIN when a non-blocking lock is not immediately
    available, and LockTimeout (a TimeoutError) when a blocking lock with ``timeout``
    (seconds) is not had in time.
    """
    fd = _checks.descriptor(fd)
    deadline = None
    if timeout is not None:
        _checks.seconds(timeout, "timeout")
        if not block:
            raise ValueError("timeout only applies to a blocking lock (block=True)")
        from ._retry import Deadline

        deadline = Deadline(timeout)
    _impl.core.lock(fd, bool(block), bool(shared), deadline, None)


def safe_unlock_and_close(fd: int) -> None:
    """Release the flock on fd and close it; EIO/ENOLCK on release are ignored (close releases)."""
    _impl.core.unlock_and_close(_checks.descriptor(fd))


def locked_file_is(fd: int, path: "StrPath") -> bool:
    """True if path names the same file (device and inode) as the open descriptor fd."""
    return _impl.core.same_file(_checks.descriptor(fd), _checks.directory(path, "path"))


def ensure_filesystem_lockable(
    path: "StrPath", timeout: float = 30, hint: str | None = None
) -> None:
    """Raise if the package will not lock on the filesystem holding path, or path is missing.

    Reads the mount table and one statfs(2) in-process; ``timeout`` is kept for
    compatibility with Toil, where it bounded a ``stat`` subprocess.  Raises
    FileNotFoundError for a missing path and RuntimeError (with ``hint``) for Ceph and
    the other filesystems refused (see filesystem_report).
    """
    from . import _filesystems, _retry

    path = _checks.directory(path, "path")
    report = _filesystems.filesystem_report(path)
    if report.strategy == _filesystems.REFUSE:
        raise _filesystems.refusal(path, report, hint)
    _retry.log(10, "%s is on %s (%s): %s", path, report.filesystem, report.type, report.reason)


def filesystem_report(path: "StrPath", *, root: "StrPath" = "/") -> "FilesystemReport":
    """The filesystem under path and what the package does there (a FilesystemReport).

    ``type``, ``mount_point``, ``options``: the mount holding path, as
    /proc/self/mountinfo names it; ``flock`` and ``posix``: whether each kind of lock
    excludes between machines there ("local", "cluster", "node", "refused" or
    "unknown"); ``strategy`` and ``reason``.  With ``root``, root/proc/self/mountinfo is
    read and path matched lexically (for captured systems).
    """
    from . import _filesystems

    return _filesystems.filesystem_report(
        _checks.directory(path, "path"), _checks.directory(root, "root")
    )


def global_mutex(
    base_dir: "StrPath", mutex: str, *, timeout: float | None = None
) -> "AbstractContextManager[None]":
    """Context manager that holds the named mutex, scoped to base_dir, while entered.

    Works between processes (including in different containers) that share base_dir,
    and between threads (each acquisition opens the file anew).  A mutex held by a dead
    process is free.  The mutex name must be one plain path component (ValueError
    otherwise, before anything touches the disk).  With ``timeout`` (seconds),
    LockTimeout (a TimeoutError naming the file, the wait and the holder) if not had in
    time.  A held mutex dropped without exiting is released
    when collected.
    """
    # The round trip is hot: a mutex name checked once is not checked again (its file name
    # is remembered), and a plain non-empty str base_dir needs no work.
    filename = _mutex_files.get(mutex) if type(mutex) is str else None
    if filename is None:
        _checks.name(mutex, "mutex name", len(MUTEX_PREFIX))
        filename = _checks.remember(_mutex_files, mutex, MUTEX_PREFIX + mutex)
    if type(base_dir) is not str or not base_dir or "\0" in base_dir:
        base_dir = _checks.directory(base_dir)
    if timeout is not None:
        _checks.seconds(timeout, "timeout")
    return _impl.core.HeldMutex(base_dir, filename, timeout)


# The file name of each mutex name already checked.
_mutex_files: dict[str, str] = {}


def install_into_toil() -> None:
    """Make Toil's toil.lib.threading run on this package, in this process.

    Every name Toil's module shares with this package becomes this package's (Toil's
    `logger`, `time` and whatever else this package does not have stay Toil's), before or
    after Toil is imported; the package then logs as `toil.lib.threading`.  Calling it
    again does nothing; ModuleNotFoundError when Toil is not installed.  To do this in
    every process of a Toil run, set TOIL_THREADING_FOR_TOIL=1 (see the README).
    """
    from ._toil import install_into_toil

    install_into_toil()
