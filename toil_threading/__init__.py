"""Cross-process coordination through file locks, compatible with Toil's toil.lib.threading.

Processes running this package and processes running Toil's own module can share one
coordination directory: the files and locks on disk are the same.  The system calls are
made by a compiled core where one was built (``ACCELERATED`` says so), by a pure-Python
twin otherwise.
"""

from __future__ import annotations

# Importing this package must stay cheap (a fresh interpreter calling cpu_count() should
# cost little more than a bare one), so nothing here imports typing, logging, threading
# or collections at import time: logging and ExceptionalThread load on first use.
import _thread
import atexit
import os
import sys

from . import _impl
from ._protocol import ARENA_MEMBERS_SUFFIX, ARENA_MUTEX_SUFFIX, MUTEX_PREFIX
from ._protocol import FILESYSTEM_NAMES as _FS_NAMES

# The core in use: every call goes through this name, so tests can switch it (_use_core).
_core = _impl.core

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Iterator
    from contextlib import AbstractContextManager
    from types import ModuleType
    from typing import TypeVar

    from ._exceptional import ExceptionalThread

    StrPath = str | os.PathLike[str]
    Number = TypeVar("Number", int, float)
    logger: logging.Logger

__all__ = [
    "ACCELERATED",
    "CpuCount",
    "CpuLimit",
    "ExceptionalThread",
    "LastProcessStandingArena",
    "LockRetryPolicy",
    "collect_process_name_garbage",
    "cpu_count",
    "current_process_name_for",
    "current_process_name_lock",
    "destroy_all_process_names",
    "ensure_filesystem_lockable",
    "explain_cpu_count",
    "get_process_name",
    "global_mutex",
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

_LOGGER_NAME = "toil_threading"


def _get_logger() -> logging.Logger:
    import logging

    return logging.getLogger(_LOGGER_NAME)


def _debug_enabled() -> bool:
    # Before anything imports logging, nothing can be listening for debug records.
    return "logging" in sys.modules and _get_logger().isEnabledFor(10)  # logging.DEBUG


def __getattr__(name: str) -> object:
    # `logger` and `ExceptionalThread` are made on first use; see the imports above.
    value: object
    if name == "logger":
        value = _get_logger()
    elif name == "ExceptionalThread":
        from ._exceptional import ExceptionalThread as value
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"logger", "ExceptionalThread"})


#: True when the compiled core is in use, False for the pure-Python twin.
ACCELERATED: bool = _core.__name__.endswith("_core_c")

# Longest file name most filesystems allow, in bytes (NAME_MAX).
_NAME_MAX = 255


class LockRetryPolicy(tuple):  # type: ignore[type-arg]
    """(max_tries, backoff, max_backoff): how EIO and ENOLCK from flock are retried.

    A plain tuple with names, not a NamedTuple: typing is too slow to import here.
    """

    __slots__ = ()

    def __new__(cls, max_tries: int, backoff: float, max_backoff: float) -> LockRetryPolicy:
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
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not (0 <= value < float("inf"))
        ):
            raise ValueError(f"{field} must be a finite number of seconds >= 0, not {value!r}")
    _core.set_retry_policy(new.max_tries, float(new.backoff), float(new.max_backoff))
    return old


def _setting(variable: str, kind: Callable[[str], Number]) -> Number | None:
    """The number in an environment variable, None if unset or empty."""
    text = os.environ.get(variable)
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        wanted = "a whole number" if kind is int else "a number"
        raise ValueError(f"{variable}={text!r} is not {wanted}") from None


def _policy_from_environment() -> None:
    max_tries = _setting("TOIL_THREADING_LOCK_MAX_TRIES", int)
    backoff = _setting("TOIL_THREADING_LOCK_BACKOFF", float)
    max_backoff = _setting("TOIL_THREADING_LOCK_MAX_BACKOFF", float)
    try:
        set_lock_retry_policy(max_tries=max_tries, backoff=backoff, max_backoff=max_backoff)
    except ValueError as error:
        raise ValueError(f"bad TOIL_THREADING_LOCK_* setting: {error}") from None


_policy_from_environment()


def _use_core(module: ModuleType) -> None:
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


def safe_lock(
    fd: int, block: bool = True, shared: bool = False, *, timeout: float | None = None
) -> None:
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
    if kind == _core.CEPH_SUPER_MAGIC:
        raise _unlockable(path, hint)
    if _debug_enabled():
        _get_logger().debug(
            "%s is on a %s filesystem: locks are allowed there", path, _fs_name(kind)
        )


def _unlockable(path: str, hint: str | None) -> RuntimeError:
    message = f"Refusing to lock under {path}: flock on Ceph is known to hang or corrupt the MDS."
    return RuntimeError(f"{message} {hint}" if hint else message)


def _mutex_refusal(base_dir: str) -> RuntimeError:
    """What global_mutex raises for a base_dir on Ceph (the cores check on each acquire)."""
    return _unlockable(base_dir, "Use a directory on a local disk, tmpfs or NFS for the mutex.")


def _fs_name(kind: int) -> str:
    return _FS_NAMES.get(kind & 0xFFFFFFFF, f"0x{kind & 0xFFFFFFFF:x}")


def global_mutex(
    base_dir: StrPath, mutex: str, *, timeout: float | None = None
) -> AbstractContextManager[None]:
    """Context manager that holds the named mutex, scoped to base_dir, while entered.

    Works between processes (including in different containers) that share base_dir;
    not between threads of one process.  A mutex held by a dead process is free.  The
    mutex name must be one plain path component (ValueError otherwise, before anything
    touches the disk).  With ``timeout`` (seconds), TimeoutError if not had in time.
    """
    base_dir = os.fspath(base_dir)
    _check_name(mutex, "mutex name", len(MUTEX_PREFIX))
    _check_timeout(timeout)
    return _core.HeldMutex(base_dir, MUTEX_PREFIX + mutex, timeout, _mutex_refusal)  # type: ignore[no-any-return]


# Process names: a name is a locked file in base_dir; it exists while its file is locked.

#: Guards current_process_name_for (and the descriptors behind it).
current_process_name_lock = _thread.allocate_lock()  # what threading.Lock() makes
#: This process's name in each base directory it has asked about.
current_process_name_for: dict[str, str] = {}
# The locked descriptor behind each name, by base directory.
_name_fds: dict[str, int] = {}


def _forget_names() -> None:
    """Drop every name of this process and close (never unlock) their descriptors.

    Closing only drops this process's reference: a forked child closing its copies
    leaves the parent's locks, and so the parent's names, alive.
    """
    for fd in _name_fds.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _name_fds.clear()
    current_process_name_for.clear()


def _after_fork_in_child() -> None:
    # The lock may have been held by a thread that does not exist in the child.
    current_process_name_lock._at_fork_reinit()  # type: ignore[attr-defined]
    _forget_names()


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
    _forget_names()


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
    return bool(_core.held(base_dir, name, True))


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
        _check_name(
            name,
            "arena name",
            max(len(MUTEX_PREFIX + ARENA_MUTEX_SUFFIX), len(ARENA_MEMBERS_SUFFIX)),
        )
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
        if self.lockfileFD is not None:
            raise RuntimeError(f"this process is already in the arena {self.name!r}")
        with global_mutex(self.base_dir, self.mutex, timeout=timeout):
            try:
                self.lockfileFD, self.lockfileName = _core.claim(self.lockfileDir, True)
            except OSError as error:
                raise RuntimeError(
                    f"could not join the arena in {self.lockfileDir}: {error}"
                ) from error

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
                    _get_logger().warning(
                        "could not remove the arena directory %s: %s", self.lockfileDir, error
                    )


# CPU count: the tightest of the machine, the affinity mask and every cgroup quota.


class CpuLimit(tuple):  # type: ignore[type-arg]
    """(source, cpus, detail): one limit on the CPUs this process may use.

    ``cpus`` is None where the source sets no limit or could not be read.
    """

    __slots__ = ()

    def __new__(cls, source: str, cpus: int | None, detail: str) -> CpuLimit:
        return tuple.__new__(cls, (source, cpus, detail))

    @property
    def source(self) -> str:
        """ "machine", "affinity", "cgroup v1", "cgroup v2" or "cgroup"."""
        return self[0]  # type: ignore[no-any-return]

    @property
    def cpus(self) -> int | None:
        """Whole CPUs allowed (rounded up), or None for no limit."""
        return self[1]  # type: ignore[no-any-return]

    @property
    def detail(self) -> str:
        """Where the figure came from, for people."""
        return self[2]  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"CpuLimit(source={self[0]!r}, cpus={self[1]!r}, detail={self[2]!r})"


class CpuCount:
    """What cpu_count() answers (``count``) and every limit it considered (``limits``)."""

    __slots__ = ("count", "limits")

    def __init__(self, count: int, limits: list[CpuLimit]) -> None:
        self.count = count
        self.limits = limits

    def __repr__(self) -> str:
        return f"CpuCount(count={self.count!r}, limits={self.limits!r})"


def explain_cpu_count(root: StrPath = "/") -> CpuCount:
    """Work out the CPU count afresh and say why: each limit considered, and the answer.

    The answer is the smallest limit found (online CPUs, affinity mask, the CPU quota of
    this process's cgroup and of each ancestor, v1 and v2), at least 1.  ``root`` is
    where /proc and the cgroup mounts are looked for: "/" except in tests.
    """
    limits = [CpuLimit(*limit) for limit in _core.cpu_limits(os.fspath(root))]
    found = [limit.cpus for limit in limits if limit.cpus is not None]
    return CpuCount(max(1, min(found)) if found else (os.cpu_count() or 1), limits)


_cpu_count: int | None = None


def cpu_count() -> int:
    """Get the rounded-up integer number of whole CPUs available.

    Counts hyperthreads as CPUs.  The smallest of the machine's online CPUs, this
    process's affinity mask and the CPU quota (cgroup v1 or v2) of the cgroup this
    process is in and of every ancestor.  Ignores cpu shares, which cannot be turned into
    a count.  Cached after the first call; at least 1.
    """
    global _cpu_count
    if _cpu_count is None:
        answer = explain_cpu_count()
        if _debug_enabled():
            for limit in answer.limits:
                _get_logger().debug("cpu_count: %s: %s", limit.source, limit.detail)
        _cpu_count = answer.count
    return _cpu_count


def parse_quota_cgroups1(
    quota_file: StrPath = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
    period_file: StrPath = "/sys/fs/cgroup/cpu/cpu.cfs_period_us",
) -> tuple[int, int]:
    """(quota, period) in microseconds from cgroup v1 files; a quota of -1 means none.

    Raises FileNotFoundError if a file is missing, ValueError if one is malformed.
    """
    return _core.parse_quota_v1(os.fspath(quota_file), os.fspath(period_file))  # type: ignore[no-any-return]


def parse_quota_cgroups2(file: StrPath = "/sys/fs/cgroup/cpu.max") -> tuple[int, int]:
    """(quota, period) in microseconds from a cgroup v2 cpu.max; "max" is returned as -1.

    Raises FileNotFoundError if the file is missing, ValueError if it is malformed.
    """
    return _core.parse_quota_v2(os.fspath(file))  # type: ignore[no-any-return]
