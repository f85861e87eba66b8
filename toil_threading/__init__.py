"""Cross-process coordination through file locks, compatible with Toil's toil.lib.threading.

Processes running this package and processes running Toil's own module can share one
coordination directory: the files and locks on disk are the same.  The system calls are
made by a compiled core where one was built (``ACCELERATED`` says so), by a pure-Python
twin otherwise.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import sys
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any, NamedTuple, Union

from ._impl import core as _core

__all__ = [
    "ACCELERATED",
    "ExceptionalThread",
    "LastProcessStandingArena",
    "LockRetryPolicy",
    "collect_process_name_garbage",
    "current_process_name_for",
    "current_process_name_lock",
    "destroy_all_process_names",
    "ensure_filesystem_lockable",
    "get_process_name",
    "global_mutex",
    "lock_retry_policy",
    "locked_file_is",
    "logger",
    "process_name_exists",
    "safe_lock",
    "safe_unlock_and_close",
    "set_lock_retry_policy",
]

StrPath = Union[str, "os.PathLike[str]"]

logger = logging.getLogger("toil_threading")

#: True when the compiled core is in use, False for the pure-Python twin.
ACCELERATED: bool = _core.__name__.endswith("_core_c")

# statfs(2) magic numbers of the filesystems named in logs and errors (linux/magic.h).
_CEPH_MAGIC = 0x00C36400
_FS_NAMES = {
    0x00C36400: "ceph",
    0x01021994: "tmpfs",
    0x0000EF53: "ext2/ext3/ext4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x794C7630: "overlayfs",
    0x65735546: "fuse",
    0x00006969: "nfs",
    0x0000517B: "smb",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x2FC12FC1: "zfs",
    0x47504653: "gpfs",
    0x0BD00BD0: "lustre",
}

# Mutex files are named like Toil's, so both exclude each other in one directory.
_MUTEX_PREFIX = "toil-mutex-"
# Longest file name most filesystems allow, in bytes (NAME_MAX).
_NAME_MAX = 255


class LockRetryPolicy(NamedTuple):
    """How EIO and ENOLCK from flock are retried: Toil's policy unless changed."""

    max_tries: int
    backoff: float
    max_backoff: float


def lock_retry_policy() -> LockRetryPolicy:
    """The policy in force for EIO/ENOLCK retries of flock."""
    return LockRetryPolicy(*_core.retry_policy())


def set_lock_retry_policy(
    *,
    max_tries: int | None = None,
    backoff: float | None = None,
    max_backoff: float | None = None,
) -> LockRetryPolicy:
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
    if isinstance(new.max_tries, bool) or not isinstance(new.max_tries, int) or new.max_tries < 1:
        raise ValueError(f"max_tries must be a whole number of at least 1, not {new.max_tries!r}")
    for field in ("backoff", "max_backoff"):
        value = getattr(new, field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0 <= value < math.inf
        ):
            raise ValueError(f"{field} must be a finite number of seconds >= 0, not {value!r}")
    _core.set_retry_policy(new.max_tries, float(new.backoff), float(new.max_backoff))
    return old


def _policy_from_environment() -> None:
    settings = {
        "max_tries": ("TOIL_THREADING_LOCK_MAX_TRIES", int),
        "backoff": ("TOIL_THREADING_LOCK_BACKOFF", float),
        "max_backoff": ("TOIL_THREADING_LOCK_MAX_BACKOFF", float),
    }
    given: dict[str, Any] = {}
    for field, (variable, kind) in settings.items():
        text = os.environ.get(variable)
        if text:
            try:
                given[field] = kind(text)
            except ValueError:
                raise ValueError(f"{variable}={text!r} is not a valid {kind.__name__}") from None
    if given:
        try:
            set_lock_retry_policy(**given)
        except ValueError as error:
            raise ValueError(f"bad TOIL_THREADING_LOCK_* setting: {error}") from None


_policy_from_environment()


def _use_core(module: Any) -> None:
    """Switch this process to the given core, keeping the retry policy (tests, benchmarks)."""
    global _core
    policy = lock_retry_policy()
    _core = module
    _core.set_retry_policy(*policy)


def _check_timeout(timeout: float | None) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise ValueError(f"timeout must be None or a number of seconds >= 0, not {timeout!r}")


def _check_name(name: str, what: str, extra: int) -> None:
    """Raise ValueError unless name is one plain path component, short enough with extra."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"{what} {name!r} is not a plain path component")
    # A character encodes to at most 4 bytes: only long names need encoding to measure.
    if (len(name) + extra) * 4 > _NAME_MAX and len(os.fsencode(name)) + extra > _NAME_MAX:
        raise ValueError(f"{what} {name!r} is too long for a file name ({_NAME_MAX} bytes)")


def safe_lock(fd: int, block: bool = True, shared: bool = False, *, timeout: float | None = None) -> None:
    """Take an flock on fd, retrying EIO and ENOLCK with back-off.

    Raises OSError with EACCES or EAGAIN when a non-blocking lock is not immediately
    available, and TimeoutError when a blocking lock with ``timeout`` (seconds) is not
    had in time.
    """
    _check_timeout(timeout)
    if timeout is not None and not block:
        raise ValueError("timeout only applies to a blocking lock (block=True)")
    _core.lock(fd, block, shared, timeout, None)


def safe_unlock_and_close(fd: int) -> None:
    """Release the flock on fd and close it; EIO/ENOLCK on release are ignored (close releases)."""
    _core.unlock_and_close(fd)


def locked_file_is(fd: int, path: StrPath) -> bool:
    """True if path names the same file (device and inode) as the open descriptor fd."""
    return bool(_core.same_file(fd, os.fspath(path)))


def ensure_filesystem_lockable(path: StrPath, timeout: float = 30, hint: str | None = None) -> None:
    """Raise if locks are unsafe on the filesystem holding path (Ceph), or path is missing.

    The type comes from one in-process statfs(2) call; ``timeout`` is kept for
    compatibility with Toil, where it bounded a ``stat`` subprocess.  Raises
    FileNotFoundError for a missing path and RuntimeError (with ``hint``) for Ceph.
    """
    path = os.fspath(path)
    kind = _core.fs_type(path)
    if kind == _CEPH_MAGIC:
        message = f"Refusing to lock under {path}: flock on Ceph is known to hang or corrupt the MDS."
        raise RuntimeError(f"{message} {hint}" if hint else message)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s is on a %s filesystem: locks are allowed there", path, _fs_name(kind))


def _fs_name(kind: int) -> str:
    return _FS_NAMES.get(kind & 0xFFFFFFFF, f"0x{kind & 0xFFFFFFFF:x}")


class _HeldMutex:
    """What global_mutex returns: a context manager holding the mutex while entered."""

    __slots__ = ("_base_dir", "_filename", "_timeout", "_fd")

    def __init__(self, base_dir: str, filename: str, timeout: float | None) -> None:
        self._base_dir = base_dir
        self._filename = filename
        self._timeout = timeout
        self._fd = -1

    def __enter__(self) -> None:
        if self._fd >= 0:
            raise RuntimeError("this global_mutex() is already entered; call global_mutex() again")
        ensure_filesystem_lockable(
            self._base_dir, hint="Use a directory on a local disk, tmpfs or NFS for the mutex."
        )
        self._fd = _core.mutex_acquire(self._base_dir, self._filename, self._timeout)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        fd, self._fd = self._fd, -1
        _core.release(fd, self._base_dir, self._filename)


def global_mutex(base_dir: StrPath, mutex: str, *, timeout: float | None = None) -> _HeldMutex:
    """Context manager that holds the named mutex, scoped to base_dir, while entered.

    Works between processes (including in different containers) that share base_dir;
    not between threads of one process.  A mutex held by a dead process is free.  The
    mutex name must be one plain path component (ValueError otherwise, before anything
    touches the disk).  With ``timeout`` (seconds), TimeoutError if not had in time.
    """
    base_dir = os.fspath(base_dir)
    _check_name(mutex, "mutex name", len(_MUTEX_PREFIX))
    _check_timeout(timeout)
    return _HeldMutex(base_dir, _MUTEX_PREFIX + mutex, timeout)


# Process names: a name is a locked file in base_dir; it exists while its file is locked.

#: Guards current_process_name_for (and the descriptors behind it).
current_process_name_lock = threading.Lock()
#: This process's name in each base directory it has asked about.
current_process_name_for: dict[str, str] = {}
# The locked descriptor behind each name, by base directory.
_name_fds: dict[str, int] = {}


def _forget_names(close: bool) -> None:
    """Drop every name of this process; close (never unlock) their descriptors if asked.

    Closing only drops this process's reference: a forked child closing its copies
    leaves the parent's locks, and so the parent's names, alive.
    """
    for fd in _name_fds.values():
        if close:
            try:
                os.close(fd)
            except OSError:
                pass
    _name_fds.clear()
    current_process_name_for.clear()


def _after_fork_in_child() -> None:
    # The lock may have been held by a thread that does not exist in the child.
    current_process_name_lock._at_fork_reinit()  # type: ignore[attr-defined]
    _forget_names(close=True)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def collect_process_name_garbage() -> None:
    """Forget the names whose files are gone (their directory was cleaned up).

    Caller must hold current_process_name_lock.
    """
    for base_dir, name in list(current_process_name_for.items()):
        if not os.path.exists(os.path.join(base_dir, name)):
            del current_process_name_for[base_dir]
            fd = _name_fds.pop(base_dir, -1)
            if fd >= 0:
                os.close(fd)


def destroy_all_process_names() -> None:
    """Delete this process's name files because the process is going away.

    Registered to run at exit.  Assumes nobody else in this process races with it.
    """
    for base_dir, name in list(current_process_name_for.items()):
        try:
            os.unlink(os.path.join(base_dir, name))
        except OSError:
            pass
    _forget_names(close=True)


atexit.register(destroy_all_process_names)


def get_process_name(base_dir: StrPath) -> str:
    """The name of this process in base_dir: like a PID, but visible across containers.

    :param base_dir: Base directory to work in. Defines the shared namespace.
    :returns: the process's name there, the same on every call from this process.
    """
    base_dir = os.fspath(base_dir)
    with current_process_name_lock:
        collect_process_name_garbage()
        name = current_process_name_for.get(base_dir)
        if name is None:
            fd, name = _core.claim(base_dir, False)
            _name_fds[base_dir] = fd
            current_process_name_for[base_dir] = name
        return name


def process_name_exists(base_dir: StrPath, name: str) -> bool:
    """True if the process named name (from get_process_name) in base_dir is alive.

    Sees across container boundaries that share base_dir.  A dead process's name file
    is removed.
    """
    base_dir = os.fspath(base_dir)
    _check_name(name, "process name", 0)
    return bool(_core.name_alive(base_dir, name))


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
        base_dir = os.fspath(base_dir)
        _check_name(name, "arena name", len(_MUTEX_PREFIX) + len("-arena-members"))
        self.base_dir = base_dir
        self.name = name
        self.mutex = name + "-arena-lock"
        self.lockfileDir = os.path.join(base_dir, name + "-arena-members")
        self.lockfileFD: int | None = None
        self.lockfileName: str | None = None

    def enter(self, *, timeout: float | None = None) -> None:
        """Enter the arena; if cleanup is under way, wait until it is finished.

        You may not enter again before leaving.  With ``timeout`` (seconds) on the wait
        for the arena's mutex, TimeoutError if not had in time.
        """
        if self.lockfileFD is not None:
            raise RuntimeError(f"this process is already in the arena {self.name!r}")
        with global_mutex(self.base_dir, self.mutex, timeout=timeout):
            try:
                self.lockfileFD, self.lockfileName = _core.claim(self.lockfileDir, True)
            except OSError as error:
                raise RuntimeError(f"could not join the arena in {self.lockfileDir}: {error}") from error

    def leave(self) -> Iterator[bool]:
        """Leave the arena; yields once if this process is the last one standing.

        The loop body runs while the arena's mutex is held, so nobody enters before the
        cleanup is done::

            for _ in arena.leave():
                ...  # we were the last process: clean up
        """
        if self.lockfileFD is None or self.lockfileName is None:
            raise RuntimeError(f"this process is not in the arena {self.name!r}")
        with global_mutex(self.base_dir, self.mutex):
            fd, name = self.lockfileFD, self.lockfileName
            self.lockfileFD = self.lockfileName = None
            _core.release(fd, self.lockfileDir, name)
            if _core.arena_scan(self.lockfileDir):
                yield True
                try:
                    os.rmdir(self.lockfileDir)
                except FileNotFoundError:
                    pass
                except OSError as error:
                    logger.warning("could not remove the arena directory %s: %s", self.lockfileDir, error)


class ExceptionalThread(threading.Thread):
    """A thread whose join() re-raises what run() raised.

    The exception is raised by the first join() that finds the thread finished; later
    joins return normally, and a join() that times out raises nothing.  Subclasses
    override tryRun() instead of run().

    >>> def divide():
    ...     return 1 // 0
    >>> thread = ExceptionalThread(target=divide)
    >>> thread.start()
    >>> thread.join()
    Traceback (most recent call last):
    ...
    ZeroDivisionError: integer division or modulo by zero
    >>> thread.join()
    >>> class Failing(ExceptionalThread):
    ...     def tryRun(self):
    ...         raise KeyError("missing")
    >>> thread = Failing()
    >>> thread.start()
    >>> thread.join()
    Traceback (most recent call last):
    ...
    KeyError: 'missing'
    """

    exc_info: tuple[type[BaseException], BaseException, TracebackType] | None = None

    def run(self) -> None:
        try:
            self.tryRun()
        except BaseException:
            self.exc_info = sys.exc_info()  # type: ignore[assignment]
            raise

    def tryRun(self) -> None:
        super().run()

    def join(self, *args: Any, **kwargs: Any) -> None:
        super().join(*args, **kwargs)
        if not self.is_alive() and self.exc_info is not None:
            _, error, traceback = self.exc_info
            self.exc_info = None
            raise error.with_traceback(traceback)
