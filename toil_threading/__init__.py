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
from . import _checks, _impl
from ._cpu import cpu_count, explain_cpu_count, parse_quota_cgroups1, parse_quota_cgroups2
from ._cpu_limits import CpuCount, CpuLimit
from ._protocol import LOGGER_NAME, MUTEX_PREFIX, RETRY_SETTINGS

TYPE_CHECKING = False
if TYPE_CHECKING:
    # What type checkers see of the names loaded on first use: each with its real type.
    import logging
    from contextlib import AbstractContextManager

    from ._arena import LastProcessStandingArena
    from ._checks import StrPath
    from ._errors import LockTimeout
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
    from ._retry import LockRetryPolicy, lock_retry_policy, set_lock_retry_policy

    ACCELERATED: bool
    logger: logging.Logger

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
    "FilesystemReport": "_filesystems",
    "LastProcessStandingArena": "_arena",
    "LockRetryPolicy": "_retry",
    "LockTimeout": "_errors",
    "collect_process_name_garbage": "_names",
    "current_process_name_for": "_names",
    "current_process_name_lock": "_names",
    "destroy_all_process_names": "_names",
    "get_process_name": "_names",
    "lock_retry_policy": "_retry",
    "process_name_exists": "_names",
    "set_lock_retry_policy": "_retry",
}

if not TYPE_CHECKING:  # type checkers see each name above, and so refuse a misspelt one

    def __getattr__(name: str) -> object:
        value: object
        if name == "ACCELERATED":
            return _impl.accelerated()  # never cached: it follows a switch of the core
        if name == "logger":
            import logging

            value = logging.getLogger(LOGGER_NAME)
        elif name in _LAZY:
            import importlib

            value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    """The public names (__all__), and the module's own dunders."""
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})


def _lock_flags_for(fd: int, device: int, directory: str) -> int:
    """The judge global_mutex hands the core: _lockability.lock_flags_for, loaded the first
    time a filesystem is met rather than at start-up (a process may never lock)."""
    from ._lockability import lock_flags_for

    return lock_flags_for(fd, device, directory)


def _apply_retry_settings() -> None:
    """The TOIL_THREADING_LOCK_* settings, where any is given (else the module that keeps
    the policy need not load at start-up)."""
    import os

    if any(os.environ.get(variable) for variable, _, _ in RETRY_SETTINGS):
        from ._retry import apply_settings

        apply_settings()


_apply_retry_settings()


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
    return _impl.core.same_file(_checks.descriptor(fd), _checks.path(path, "path"))


def ensure_filesystem_lockable(
    path: "StrPath", timeout: float = 30, hint: str | None = None
) -> None:
    """Raise if the package will not lock on the filesystem holding path, or path is missing.

    Reads the mount table and one statfs(2) in-process; ``timeout`` is kept for
    compatibility with Toil, where it bounded a ``stat`` subprocess.  Raises
    FileNotFoundError for a missing path and RuntimeError (with ``hint``) for Ceph and
    the other filesystems refused (see filesystem_report).
    """
    from ._errors import log
    from ._lockability import ensure_lockable

    path = _checks.path(path, "path")
    found = ensure_lockable(path, hint)
    log(10, "%s is on %s (%s): %s", path, found.filesystem, found.type, found.reason)


def filesystem_report(path: "StrPath", *, root: "StrPath" = "/") -> "FilesystemReport":
    """The filesystem under path and what the package does there (a FilesystemReport).

    ``type``, ``mount_point``, ``options``: the mount holding path, as
    /proc/self/mountinfo names it; ``flock`` and ``posix``: whether each kind of lock
    excludes between machines there ("local", "cluster", "node", "refused" or
    "unknown"); ``strategy`` and ``reason``.  With ``root``, root/proc/self/mountinfo is
    read and path matched lexically (for captured systems).
    """
    from ._lockability import filesystem_report

    return filesystem_report(_checks.path(path, "path"), _checks.path(root, "root"))


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
        base_dir = _checks.path(base_dir)
    if timeout is not None:
        _checks.seconds(timeout, "timeout")
    return _impl.core.HeldMutex(base_dir, filename, timeout, _lock_flags_for)


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
