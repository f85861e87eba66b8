"""Pure-Python core of toil_threading: the lock primitives over the os and fcntl modules.

Twin of csrc/_core_c.pyx: same names, signatures and behaviour.  Python already retries
EINTR in these calls after running the signal handlers (PEP 475), so Ctrl-C works here
without help.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import time

# The cgroup and affinity walk: the compiled core includes the same source.
from ._cgroups import cpu_limits as cpu_limits
from ._cgroups import parse_quota_v1 as parse_quota_v1
from ._cgroups import parse_quota_v2 as parse_quota_v2
from ._protocol import CEPH, NAME_CHARACTERS, NAME_LENGTH, NAME_PREFIX, SHARED_FILESYSTEMS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def _log(level: str, message: str, *args: object) -> None:
    # logging is imported only when something is worth saying: it costs milliseconds.
    import logging

    getattr(logging.getLogger("toil_threading"), level)(message, *args)


# The EIO/ENOLCK retry policy; the facade sets it from the environment at import.
_policy = (10, 1.0, 60.0)

# Ceph, where flock is known to hang or break the MDS.
CEPH_SUPER_MAGIC = CEPH

# Longest pause between two non-blocking tries of a lock wait that has a timeout.
POLL_CAP = 0.01

_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
_RETRIED = (errno.EIO, errno.ENOLCK)
_VANISHED = (errno.ENOENT, errno.ESTALE)
_MUTEX_FLAGS = os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW
_PROBE_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_CLAIM_FLAGS = os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW

# How many names claim() tries before giving up, as tempfile does (TMP_MAX).
CLAIM_TRIES = 10000


def set_retry_policy(max_tries: int, backoff: float, max_backoff: float) -> None:
    global _policy
    _policy = (int(max_tries), float(backoff), float(max_backoff))


def retry_policy() -> tuple[int, float, float]:
    return _policy


def _deadline_of(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _lock_fd(fd: int, block: bool, shared: bool, deadline: float | None, path: str | None) -> None:
    op = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    if deadline is not None or not block:
        op |= fcntl.LOCK_NB
    max_tries, backoff, max_backoff = _policy
    failures = 0
    poll = 0.001
    where = path or f"fd {fd}"
    while True:
        try:
            fcntl.flock(fd, op)
            return
        except OSError as error:
            err = error.errno or 0
            left = 0.0 if deadline is None else deadline - time.monotonic()
            if err in _BUSY:
                if deadline is None:
                    raise OSError(err, os.strerror(err), path) from None
                if left <= 0:
                    raise TimeoutError(f"timed out waiting for the lock on {where}") from None
                time.sleep(min(poll, left))
                poll = min(poll * 2, POLL_CAP)
                continue
            if err in _RETRIED:
                failures += 1
                if failures < max_tries:
                    _log(
                        "error",
                        "flock on %s failed with %s (try %d of %d); retrying in %g s",
                        where,
                        os.strerror(err),
                        failures,
                        max_tries,
                        backoff,
                    )
                    if deadline is not None and left < backoff:
                        time.sleep(left)
                        raise TimeoutError(
                            f"timed out retrying the lock on {where} after {os.strerror(err)}"
                        ) from None
                    time.sleep(backoff)
                    backoff = min(backoff * 2, max_backoff)
                    continue
                _log(
                    "critical",
                    "giving up on flock of %s after %d tries: %s. %s",
                    where,
                    failures,
                    os.strerror(err),
                    "ENOLCK usually means an NFS mount without a working lock daemon (lockd)"
                    if err == errno.ENOLCK
                    else "EIO from flock is typical of a Ceph MDS in trouble;"
                    " Ceph is not safe for locks",
                )
            raise OSError(err, os.strerror(err), path) from None


def lock(fd: int, block: bool, shared: bool, timeout: float | None, path: str | None) -> None:
    _lock_fd(fd, block, shared, _deadline_of(timeout), path)


def _close(fd: int) -> None:
    """close(2) frees the descriptor whatever it returns (ESTALE on a shared filesystem)."""
    try:
        os.close(fd)
    except OSError as error:
        if error.errno == errno.EBADF:
            raise


def unlock_and_close(fd: int) -> None:
    """Unlock and close fd.  Closing releases the lock anyway, so an unlock that fails
    with EIO/ENOLCK (lock daemon trouble) or ESTALE (the file is gone on the server) is
    not an error."""
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError as error:
        _close(fd)
        if error.errno not in (*_RETRIED, errno.ESTALE):
            raise
        return
    _close(fd)


def _is_same(fd: int, path: str, fresh: bool) -> bool | None:
    """True if path names the file open at fd, False if another file, None if nothing.

    A symlink now at path is another file.  fresh: see _identity_at.
    """
    try:
        held = os.fstat(fd)
    except OSError as error:
        if error.errno == errno.ESTALE:
            return None
        raise
    if fresh and held.st_nlink == 0:
        return None
    found = _identity_at(path, fresh)
    return None if found is None else found == (held.st_dev, held.st_ino)


# Per directory: is it on a shared filesystem?  Decided once per process (a statfs).
_shared_directories: dict[str, bool] = {}


def _on_shared_filesystem(directory: str) -> bool:
    found = _shared_directories.get(directory)
    if found is None:
        try:
            kind = _f_type(directory)
        except OSError:
            return False  # the operation itself will meet and report the problem
        found = _shared_directories[directory] = kind in SHARED_FILESYSTEMS
    return found


def _directory_exists(directory: str) -> bool:
    """After ENOENT creating a file in it: was it the directory, or a stale cache entry?"""
    return os.path.exists(directory)


def same_file(fd: int, path: str) -> bool:
    return bool(_is_same(fd, path, _f_type(fd) in SHARED_FILESYSTEMS))


_libc: Any = None  # ctypes.CDLL of the C library, loaded when first needed


def _f_type(target: str | int) -> int:
    """statfs(2) (for a path) or fstatfs(2) (for a descriptor) f_type; 0 off Linux."""
    global _libc
    if not sys.platform.startswith("linux"):
        if isinstance(target, str):
            os.stat(target)  # the same errors for a missing path as on Linux
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
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), None if isinstance(target, int) else target)
    return ctypes.c_long.from_buffer(buffer).value


def fs_type(path: str) -> int:
    """The f_type of statfs(2) for path (0 where this platform does not give one)."""
    return _f_type(path)


class HeldMutex:
    """What global_mutex returns: a context manager holding the mutex file while entered.

    refusal(base_dir) makes the exception raised when base_dir is on a filesystem
    where locks are unsafe (checked on every acquisition, as Toil does).
    """

    __slots__ = ("_fd", "_fresh", "_id", "_path", "_refusal", "_timeout", "base_dir", "filename")

    def __init__(
        self,
        base_dir: str,
        filename: str,
        timeout: float | None,
        refusal: Callable[[str], BaseException],
    ) -> None:
        self.base_dir, self.filename = base_dir, filename
        self._timeout, self._refusal = timeout, refusal
        self._path = f"{base_dir}/{filename}"
        if "\0" in self._path:
            raise ValueError(f"embedded null byte in path {self._path!r}")
        self._fd = -1
        self._id = (0, 0)
        self._fresh = False

    def _acquire(self, deadline: float | None) -> None:
        """Open, lock and verify the mutex file; fills in the descriptor and identity."""
        path = self._path
        checked = False
        while True:
            try:
                fd = os.open(path, _MUTEX_FLAGS, 0o666)
            except OSError as error:
                if error.errno in (errno.ESTALE, errno.EEXIST) or (
                    error.errno == errno.ENOENT and _directory_exists(self.base_dir)
                ):
                    # Another client changed the directory under our cache (a shared
                    # filesystem can even answer EEXIST to an open without O_EXCL).
                    continue
                if error.errno in (errno.ENOENT, errno.ENOTDIR):
                    raise OSError(error.errno, error.strerror, self.base_dir) from None
                raise
            try:
                if not checked:
                    # Checked on the open file, before any lock, once per acquisition:
                    # see the compiled twin.
                    kind = _f_type(fd)
                    if kind == CEPH_SUPER_MAGIC:
                        raise self._refusal(self.base_dir)
                    self._fresh = kind in SHARED_FILESYSTEMS
                    checked = True
                _lock_fd(fd, True, False, deadline, path)
                info = os.fstat(fd)
                identity = (info.st_dev, info.st_ino)
                if (
                    not (self._fresh and info.st_nlink == 0)
                    and _identity_at(path, self._fresh) == identity
                ):
                    self._fd, self._id = fd, identity
                    return
            except OSError as error:
                _close(fd)
                if error.errno in _VANISHED:
                    continue
                raise
            except BaseException:
                _close(fd)
                raise
            # The previous holder unlinked (or someone replaced) the file while we waited.
            _close(fd)

    def __enter__(self) -> None:
        if self._fd >= 0:
            raise RuntimeError("this global_mutex() is already entered; call global_mutex() again")
        self._acquire(_deadline_of(self._timeout))

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        fd = self._fd
        if fd < 0:
            raise RuntimeError("this global_mutex() was not entered")
        self._fd = -1
        try:
            found = _identity_at(self._path, self._fresh)
            if found == self._id and _unlinked(self._path):
                return
            _log_lost_lock_file(self._path, None if found == self._id else found)
        finally:
            unlock_and_close(fd)


def _identity_at(path: str, fresh: bool) -> tuple[int, int] | None:
    """(device, inode) of what path names now (a symlink itself), None if nothing.

    With fresh (shared filesystems, whose caches may answer for a file already gone),
    the path is opened anew, which the server resolves, instead of trusting stat(2).
    """
    try:
        if not fresh:
            info = os.stat(path, follow_symlinks=False)
        else:
            try:
                named_fd = os.open(path, _PROBE_FLAGS)
            except OSError as error:
                if error.errno == errno.ELOOP:
                    return (-1, -1)  # a symlink: another file than ours
                raise
            try:
                info = os.fstat(named_fd)
            finally:
                _close(named_fd)
    except OSError as error:
        if error.errno in _VANISHED:
            return None
        raise
    return (info.st_dev, info.st_ino)


def _unlinked(path: str) -> bool:
    """Unlink path; False if it was already gone (a shared filesystem's stale cache)."""
    try:
        os.unlink(path)
    except OSError as error:
        if error.errno in _VANISHED:
            return False
        raise
    return True


def _log_lost_lock_file(path: str, found: object) -> None:
    _log(
        "error",
        "lock file %s was %s while its lock was held (by pid %d): "
        "something outside the locking protocol touched it",
        path,
        "removed" if found is None else "replaced",
        os.getpid(),
    )


def release(fd: int, base_dir: str, filename: str) -> None:
    path = f"{base_dir}/{filename}"
    try:
        sameness = _is_same(fd, path, _on_shared_filesystem(base_dir))
        if not (sameness and _unlinked(path)):
            _log_lost_lock_file(path, None if sameness else sameness)
    finally:
        unlock_and_close(fd)


def _probe(path: str, remove_dead: bool, fresh: bool) -> bool | None:
    """Is the file at path held by a live owner (True, else False; None if absent)?

    Only a shared non-blocking lock is tried, and let go at once.  If remove_dead, a
    file nobody holds belongs to a dead owner and is removed, but only while it is
    still the file at that path.  fresh: see _identity_at.
    """
    while True:
        try:
            fd = os.open(path, _PROBE_FLAGS)
        except OSError as error:
            if error.errno in (*_VANISHED, errno.ELOOP):
                return None
            raise
        try:
            _lock_fd(fd, False, True, None, path)
        except BlockingIOError:
            _close(fd)
            return True
        except OSError as error:
            _close(fd)
            if error.errno in _VANISHED:
                return None  # opened through a stale cache entry: the file is gone
            raise
        except BaseException:
            _close(fd)
            raise
        if not remove_dead:
            unlock_and_close(fd)
            return False
        try:
            sameness = _is_same(fd, path, fresh)
            if sameness:
                _unlinked(path)
        finally:
            unlock_and_close(fd)
        if sameness is not False:
            return False if sameness else None
        # A new file took the name between our open and our check: look at that one.


def held(directory: str, name: str, remove_dead: bool) -> bool | None:
    return _probe(f"{directory}/{name}", remove_dead, _on_shared_filesystem(directory))


def claim(directory: str, make_directory: bool) -> tuple[int, str]:
    if make_directory:
        try:
            os.mkdir(directory, 0o777)
        except FileExistsError:
            pass
    fresh = _on_shared_filesystem(directory)
    for _ in range(CLAIM_TRIES):
        name = NAME_PREFIX + "".join(
            NAME_CHARACTERS[byte % len(NAME_CHARACTERS)] for byte in os.urandom(NAME_LENGTH)
        )
        path = f"{directory}/{name}"
        try:
            fd = os.open(path, _CLAIM_FLAGS, 0o600)
        except OSError as error:
            if error.errno in (errno.EEXIST, errno.ESTALE) or (
                error.errno == errno.ENOENT and _directory_exists(directory)
            ):
                continue
            raise OSError(error.errno, error.strerror, directory) from None
        try:
            _lock_fd(fd, False, False, None, path)
            if _is_same(fd, path, fresh):
                return fd, name
        except BlockingIOError:
            pass  # a poller is looking at it, and will remove it
        except OSError as error:
            if error.errno not in _VANISHED:
                _close(fd)
                raise
        except BaseException:
            _close(fd)
            raise
        _close(fd)
    raise FileExistsError(
        errno.EEXIST, f"no free name for a new file after {CLAIM_TRIES} tries", directory
    )


def arena_scan(directory: str) -> bool:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return True
    fresh = _on_shared_filesystem(directory)
    for name in names:
        if not name.startswith(".") and _probe(f"{directory}/{name}", True, fresh):
            return False
    return True
