"""Pure-Python core: the package's system calls and hot loops, over the os and fcntl modules.

Twin of csrc/_core_c.pyx: the same functions, signatures and behaviour.  Every failure
is handed to toil_threading._retry, as the compiled core does.  Python already releases
the GIL around each of these calls and retries EINTR after running the signal handlers
(PEP 475), so a Ctrl-C during a wait raises KeyboardInterrupt here without help.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import sys
import time

from . import _retry
from ._locks import (
    FLOCK,
    RECORD,
    announce_waiting,
    lock_call,
    record_locked_elsewhere,
    unlock_record,
    waiters_announced,
)
from ._protocol import (
    ABSENT,
    ALIVE,
    DEAD,
    DENIED,
    MEMBERS_DIRECTORY_MODE,
    MUTEX_FILE_MODE,
    NAME_CHARACTERS,
    NAME_FILE_MODE,
    NAME_LENGTH,
    NAME_PREFIX,
    RECORD_LOCK,
    REMOVED,
    SHARED,
    WAIT,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_VANISHED = (errno.ENOENT, errno.ESTALE)
_REFUSED_UNLINK = (errno.EPERM, errno.EACCES)
_COMMON = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
# Read and write: a waiter announces itself with a read lock (see announce_waiting).
_CREATE = os.O_CREAT | os.O_RDWR | _COMMON
_WRITE = os.O_WRONLY | _COMMON
_PROBE = os.O_RDONLY | _COMMON
_CLAIM = os.O_CREAT | os.O_EXCL | os.O_RDWR | _COMMON
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# A file still at its path (_SAME), gone from it (_GONE), or another file there (_REPLACED).
_SAME, _GONE, _REPLACED = 0, 1, 2
# What a lock call reports when the lock was had: at once, or after waiting for it.
_HAD, _WAITED = 0, 1
# Why a new lock file was let go: lost to another process after waiting for it (_LOST), or
# found gone or changed at once, as a shared filesystem's stale cache makes it (_STALE).
_LOST, _STALE = -1, -2

# Forks this process came through (counted in each child): a lock entered before the fork
# that made this process belongs to its parent, which this process must never release.
# Forks this process made (counted before each): a lock entered before one may be shared
# with a child, so closing our descriptor would not release it; with none, it is ours.
_forks = 0
_forks_made = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


def _count_fork_made() -> None:
    global _forks_made
    _forks_made += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_count_fork_made, after_in_child=_count_fork)


# Locks: flock(2), and where a filesystem needs it an open-file-description record lock.


def _lock(
    fd: int,
    how: int,
    exclusive: bool,
    block: bool,
    deadline: float | None,
    path: str | None,
    announce: bool = False,
) -> int:
    """Take a lock with the package's policy (_retry.after_lock_call): _HAD or _WAITED once
    had, or, without block, the errno saying it is busy.  With announce, a wait is
    announced first (announce_waiting), so the holder keeps the file for us."""
    counts = [0, 0]
    wait = False
    while True:
        err = lock_call(fd, how, exclusive, wait)
        if err == 0:
            return _WAITED if wait or counts[1] else _HAD
        if announce and block and err in (errno.EAGAIN, errno.EACCES):
            announce = False
            announce_waiting(fd)
        step = _retry.after_lock_call(err, block, deadline, path, fd, counts)
        if step > 0:
            return step
        wait = wait or step == WAIT


def _unlock_and_close(fd: int, strategy: int, sole: bool = False) -> None:
    """Let go of every lock on fd and close it.  Closing releases the locks anyway, so an
    unlock failing with EIO/ENOLCK (lock daemon trouble) or ESTALE is not an error; close
    frees the descriptor whatever it returns.  A descriptor no other process shares (sole)
    is only closed: that alone lets its locks go, with one system call fewer."""
    failure = 0
    if sole:
        if _close(fd):
            raise _retry.error(errno.EBADF, None)
        return
    try:
        if strategy & RECORD_LOCK:
            unlock_record(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError as error:
        failure = error.errno or errno.EIO
    closed = _close(fd)  # whatever the unlock did
    failure = failure or closed
    if failure and failure not in (errno.EIO, errno.ENOLCK, errno.ESTALE):
        raise _retry.error(failure, None)


def _close(fd: int) -> int:
    """close(2), which frees the descriptor whatever it returns (a shared filesystem may
    report ENOENT or ESTALE from its flush): EBADF, the one error worth raising, or 0."""
    try:
        os.close(fd)
    except OSError as error:
        return errno.EBADF if error.errno == errno.EBADF else 0
    return 0


def lock(fd: int, block: bool, shared: bool, deadline: float | None, path: str | None) -> None:
    busy = _lock(fd, FLOCK, not shared, block, deadline, path)
    if busy > _WAITED:
        raise _retry.error(busy, path)


def unlock_and_close(fd: int) -> None:
    _unlock_and_close(fd, 0)


def fs_magic(target: str | int) -> int:
    """statfs(2) (a path) or fstatfs(2) (a descriptor) f_type; 0 off Linux."""
    global _libc
    if not sys.platform.startswith("linux"):
        os.stat(target)  # the same errors for a missing path or a bad descriptor
        return 0
    import ctypes  # here, not at the top: it costs milliseconds to import

    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    # struct statfs opens with f_type, a C long, on every Linux ABI; 256 bytes hold it all.
    buffer = ctypes.create_string_buffer(256)
    if isinstance(target, int):
        failed = _libc.fstatfs(target, buffer) != 0
    else:
        failed = _libc.statfs(os.fsencode(target), buffer) != 0
    if failed:
        raise _retry.error(ctypes.get_errno(), None if isinstance(target, int) else target)
    return int(ctypes.c_long.from_buffer(buffer).value)


_libc: Any = None  # ctypes.CDLL of the C library, loaded when first needed


# How to lock on each filesystem met (its device), decided once by _filesystems.  Kept
# small: a process meeting more filesystems than this starts the table again.
_strategies: dict[int, int] = {}
_STRATEGIES_KEPT = 64


def _strategy(fd: int, device: int, directory: str) -> int:
    found = _strategies.get(device)
    if found is None:
        from . import _filesystems

        found = _filesystems.strategy_for(fd, device, directory)
        if len(_strategies) >= _STRATEGIES_KEPT:
            _strategies.clear()
        _strategies[device] = found
    return found


def _identity_at(dir_fd: int | None, name: str) -> tuple[int, int] | None:
    """(device, inode) of the file name now names, opened afresh (which a shared
    filesystem's server resolves, where stat(2) may answer from a cache); None if
    nothing is there, (-1, -1) for a symlink."""
    try:
        fd = os.open(name, _PROBE, dir_fd=dir_fd)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return (-1, -1)
        if error.errno in _VANISHED:
            return None
        raise
    try:
        info = os.fstat(fd)
    except OSError as error:
        if error.errno != errno.ESTALE:
            raise
        return None
    finally:
        _close(fd)
    return (info.st_dev, info.st_ino)


def _sameness(fd: int, dir_fd: int | None, name: str, strategy: int) -> int:
    """Does name (relative to dir_fd) still name the locked file open at fd?

    On a local filesystem the locked descriptor answers: nobody unlinks a lock file but
    its holder, so a file with one link is still at its path.  A shared filesystem's
    cached attributes may lie, so there the path is opened afresh and compared.
    """
    try:
        info = os.fstat(fd)
    except OSError as error:
        if error.errno == errno.ESTALE:
            return _GONE
        raise
    if info.st_nlink == 0:
        return _GONE
    if info.st_nlink == 1 and not strategy & SHARED:
        return _SAME
    found = _identity_at(dir_fd, name)
    if found is None:
        return _GONE
    return _SAME if found == (info.st_dev, info.st_ino) else _REPLACED


def same_file(fd: int, path: str) -> bool:
    return _sameness(fd, None, path, SHARED) == _SAME


# global_mutex: the mutex file, opened, locked and verified, then unlinked and let go.


def _open_lock_file(directory: str, path: str, deadline: float | None) -> int:
    """Open (creating it if missing) the lock file at path, never through a symlink.

    Another user's file that we may not write is opened read-only, without O_CREAT
    (kernels with fs.protected_regular refuse O_CREAT on it in a sticky directory):
    flock works on any descriptor.
    """
    flags = _CREATE
    tries = 0
    while True:
        try:
            return os.open(path, flags, MUTEX_FILE_MODE)
        except OSError as error:
            err = error.errno or errno.EIO
        if err == errno.EACCES and flags != _PROBE:
            flags = _WRITE if flags == _CREATE else _PROBE
        elif err == errno.ENOENT and flags != _CREATE:
            # Refused creating it, then found none: the directory may not be ours to write,
            # or the file went away in between; creating once more tells which.
            tries += 1
            if tries > 1:
                raise _retry.error(errno.EACCES, path)
            flags = _CREATE
        elif err in (errno.ENXIO, errno.EISDIR):
            raise _retry.not_a_regular_file(path, "a lock file")
        elif err in (*_VANISHED, errno.EEXIST):
            tries += 1
            _retry.vanished(err, tries, deadline, directory, path)
        elif err == errno.ENOTDIR:
            raise _retry.error(err, directory)
        else:
            raise _retry.error(err, path)


def _lock_new(
    fd: int, directory: str, name: str, dir_fd: int | None, block: bool, deadline: float | None
) -> int:
    """Check that fd is a regular file, lock it exclusively by its filesystem's strategy
    and verify it is still at its name.  Returns the strategy; or _LOST or _STALE when the
    file is not worth keeping (the caller closes it and starts again).  A wait on a local
    filesystem is announced, so that the holder keeps the file for us."""
    shown = name if dir_fd is None else f"{directory}/{name}"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _retry.not_a_regular_file(shown, "a lock file")
        strategy = _strategy(fd, info.st_dev, directory)
        had = _lock(fd, FLOCK, True, block, deadline, shown, strategy == 0)
        if strategy & RECORD_LOCK and had <= _WAITED:
            had = max(had, _lock(fd, RECORD, True, block, deadline, shown))
    except OSError as error:
        if error.errno in _VANISHED:
            return _STALE  # opened through a stale cache entry: the file is gone
        raise
    if had > _WAITED:
        return _LOST  # held, and not to be waited for (a poller looking at a new file)
    if _sameness(fd, dir_fd, name, strategy) == _SAME:
        return strategy
    return _LOST if had == _WAITED else _STALE


def _unlink(dir_fd: int | None, name: str) -> int:
    """Unlink name: 0 when done; the errno when refused (EPERM, EACCES: another user's
    file in a sticky directory) or when it is gone already (ENOENT, ESTALE)."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError as error:
        if error.errno in (*_REFUSED_UNLINK, *_VANISHED):
            return error.errno
        raise
    return 0


def _release_at(
    fd: int,
    dir_fd: int | None,
    name: str,
    shown: str,
    strategy: int,
    keep_for_waiters: bool = False,
    sole: bool = False,
) -> None:
    """Unlink the lock file if it is still ours, then let go of it (always).  With
    keep_for_waiters, a file others announced they wait on stays, for them to lock; a sole
    descriptor is only closed (see _unlock_and_close)."""
    try:
        sameness = _sameness(fd, dir_fd, name, strategy)
        kept = keep_for_waiters and os.fstat(fd).st_size > 0 and waiters_announced(fd)
        refused = _unlink(dir_fd, name) if sameness == _SAME and not kept else 0
        if refused in _REFUSED_UNLINK:
            _retry.kept(shown, refused)
        elif refused:
            sameness = _GONE
        if sameness != _SAME:
            _retry.lost(shown, sameness == _REPLACED)
    finally:
        _unlock_and_close(fd, strategy, sole)


class HeldMutex:
    """What global_mutex returns: a context manager holding the mutex file while entered.

    Dropped while entered (never exited), it lets the mutex go when collected.
    """

    __slots__ = (
        "_base_dir",
        "_fd",
        "_filename",
        "_forks",
        "_forks_made",
        "_path",
        "_strategy",
        "_timeout",
    )

    def __init__(self, base_dir: str, filename: str, timeout: float | None) -> None:
        self._fd = -1
        self._base_dir, self._filename, self._timeout = base_dir, filename, timeout
        self._path = f"{base_dir}/{filename}"
        if "\0" in self._path:
            raise ValueError(f"embedded null byte in path {self._path!r}")
        self._strategy = self._forks = self._forks_made = 0

    @property
    def base_dir(self) -> str:
        return self._base_dir

    @property
    def filename(self) -> str:
        return self._filename

    def __enter__(self) -> None:
        if self._fd >= 0:
            raise RuntimeError("this global_mutex() is already entered; call global_mutex() again")
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        stale = 0
        while True:
            fd = _open_lock_file(self._base_dir, self._path, deadline)
            try:
                strategy = _lock_new(fd, self._base_dir, self._path, None, True, deadline)
            except BaseException:
                _close(fd)
                raise
            if strategy >= 0:
                self._fd, self._strategy = fd, strategy
                self._forks, self._forks_made = _forks, _forks_made
                return
            # The previous holder unlinked (or someone replaced) the file while we waited;
            # or a stale cache showed us a file already gone: then pause, within bounds.
            _close(fd)
            stale = stale + 1 if strategy == _STALE else 0
            if stale:
                _retry.vanished(errno.ESTALE, stale, deadline, self._base_dir, self._path)

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if self._fd < 0:
            raise RuntimeError("this global_mutex() was not entered")
        self._end_hold()

    def __del__(self) -> None:
        if self._fd >= 0:
            self._end_hold()

    def _end_hold(self) -> None:
        fd, self._fd = self._fd, -1
        if self._forks != _forks:
            _close(fd)  # entered before the fork that made us: the lock is the parent's
        else:
            # On a local filesystem: keep the file for announced waiters; and with no fork
            # since we took it, our descriptor is the only one: closing it lets the lock go.
            local = self._strategy == 0
            sole = local and self._forks_made == _forks_made
            _release_at(fd, None, self._path, self._path, self._strategy, local, sole)


# Process names and arena members: mkstemp-style files, each locked by its owner.


def _fresh_name() -> str:
    letters = len(NAME_CHARACTERS)
    return NAME_PREFIX + "".join(NAME_CHARACTERS[b % letters] for b in os.urandom(NAME_LENGTH))


def _is_name(name: str) -> bool:
    """Named like a name or member file (so the package may have made it)."""
    return (
        len(name) == len(NAME_PREFIX) + NAME_LENGTH
        and name.startswith(NAME_PREFIX)
        and not name[len(NAME_PREFIX) :].strip(NAME_CHARACTERS)
    )


def _claim_at(dir_fd: int | None, directory: str) -> tuple[int, str]:
    """Create and lock a fresh name file in directory (relative to dir_fd if given).

    A name taken already (EEXIST), a file gone under a stale cache, or one a poller is
    looking at: try another name, pausing from the second miss on, within bounds."""
    misses = 0
    while True:
        name = _fresh_name()
        path = f"{directory}/{name}"
        try:
            fd = os.open(path if dir_fd is None else name, _CLAIM, NAME_FILE_MODE, dir_fd=dir_fd)
        except OSError as error:
            err = error.errno or errno.EIO
            if err != errno.EEXIST and err not in _VANISHED:
                raise _retry.error(err, directory) from None
        else:
            try:
                strategy = _lock_new(
                    fd, directory, path if dir_fd is None else name, dir_fd, False, None
                )
            except BaseException:
                _close(fd)
                raise
            if strategy >= 0:
                return fd, name
            _close(fd)
            err = errno.ESTALE if strategy == _STALE else errno.EEXIST
        misses += 1
        _retry.vanished(err, misses, None, directory, directory)


def claim_name(directory: str) -> tuple[int, str]:
    return _claim_at(None, directory)


def _open_directory(directory: str) -> int:
    try:
        return os.open(directory, _DIRECTORY)
    except OSError as error:
        raise _retry.directory_error(error.errno or errno.EIO, directory) from None


def claim_member(directory: str) -> tuple[int, str]:
    try:
        os.mkdir(directory, MEMBERS_DIRECTORY_MODE)
    except FileExistsError:
        pass
    except OSError as error:
        raise _retry.error(error.errno or errno.EIO, directory) from None
    dir_fd = _open_directory(directory)
    try:
        return _claim_at(dir_fd, directory)
    finally:
        _close(dir_fd)


def release(fd: int, directory: str, name: str) -> None:
    path = f"{directory}/{name}"
    strategy = 0
    try:
        strategy = _strategy(fd, os.fstat(fd).st_dev, directory)
    finally:
        _release_at(fd, None, path, path, strategy)


def _probe_at(dir_fd: int | None, name: str, shown: str, directory: str, remove_dead: bool) -> int:
    """What the file at name (relative to dir_fd) says of its owner: ALIVE, DEAD, REMOVED,
    DENIED or ABSENT (also for anything that is not a regular file: never ours).

    Only a shared non-blocking lock is tried, and let go at once.  With remove_dead, an
    unlocked empty file named like ours is removed, while it is still the one found."""
    replaced = 0
    while True:
        try:
            fd = os.open(name, _PROBE, dir_fd=dir_fd)
        except OSError as error:
            if error.errno in (*_VANISHED, errno.ELOOP, errno.ENXIO):
                return ABSENT
            if error.errno in (errno.EACCES, errno.EPERM):
                return DENIED
            raise _retry.error(error.errno or errno.EIO, shown) from None
        strategy = 0
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return ABSENT
            strategy = _strategy(fd, info.st_dev, directory)
            try:
                if _lock(fd, FLOCK, False, False, None, shown) > _WAITED:
                    return ALIVE
            except OSError as error:
                if error.errno in _VANISHED:
                    return ABSENT  # opened through a stale cache entry: the file is gone
                raise
            if strategy & RECORD_LOCK and record_locked_elsewhere(fd):
                return ALIVE
            if not (remove_dead and info.st_size == 0 and _is_name(os.path.basename(name))):
                return DEAD
            sameness = _sameness(fd, dir_fd, name, strategy)
            if sameness == _SAME:
                return DEAD if _unlink(dir_fd, name) in _REFUSED_UNLINK else REMOVED
            if sameness == _GONE:
                return ABSENT
        finally:
            _unlock_and_close(fd, strategy)
        # A new file took the name between our open and our check: look at that one.
        replaced += 1
        _retry.vanished(errno.ESTALE, replaced, None, directory, shown)


def probe(directory: str, name: str, remove_dead: bool) -> int:
    path = f"{directory}/{name}"
    return _probe_at(None, path, path, directory, remove_dead)


def _scan_at(
    dir_fd: int, directory: str, remove_dead: bool, stop_at_live: bool
) -> list[tuple[str, int]]:
    found = []
    for entry in os.scandir(dir_fd):
        if not (_is_name(entry.name) and entry.is_file(follow_symlinks=False)):
            continue  # not ours: never counted, never removed
        state = _probe_at(dir_fd, entry.name, f"{directory}/{entry.name}", directory, remove_dead)
        if state != ABSENT:
            found.append((entry.name, state))
        if stop_at_live and state in (ALIVE, DENIED):
            break
    return found


def scan(directory: str, remove_dead: bool) -> list[tuple[str, int]]:
    dir_fd = _open_directory(directory)
    try:
        return _scan_at(dir_fd, directory, remove_dead, False)
    finally:
        _close(dir_fd)


def leave_arena(fd: int, directory: str, name: str) -> tuple[str, int] | None:
    try:
        dir_fd = _open_directory(directory)
    except BaseException:
        _close(fd)
        raise
    try:
        strategy = 0
        try:
            strategy = _strategy(fd, os.fstat(fd).st_dev, directory)
        finally:
            _release_at(fd, dir_fd, name, f"{directory}/{name}", strategy)
        found = _scan_at(dir_fd, directory, True, True)
    finally:
        _close(dir_fd)
    return found[-1] if found and found[-1][1] in (ALIVE, DENIED) else None


# cgroup files: small files of numbers, read whole.


def read_text(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as error:
        raise _retry.error(error.errno or errno.EIO, path) from None
    chunks = []
    try:
        # Only a regular file (as /proc, sysfs and cgroup files are): a device such as
        # /dev/zero would never end, a FIFO not say anything.
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _retry.not_a_regular_file(path, "a file to read")
        while True:
            try:
                chunk = os.read(fd, 8192)
            except OSError as error:
                raise _retry.error(error.errno or errno.EIO, path) from None
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        _close(fd)
    return b"".join(chunks).decode("utf-8", "surrogateescape")
