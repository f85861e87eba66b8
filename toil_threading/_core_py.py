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


def _log(level: str, message: str, *args: object) -> None:
    # logging is imported only when something is worth saying: it costs milliseconds.
    import logging

    getattr(logging.getLogger("toil_threading"), level)(message, *args)

# The EIO/ENOLCK retry policy; the facade sets it from the environment at import.
_policy = (10, 1.0, 60.0)

# Longest pause between two non-blocking tries of a lock wait that has a timeout.
POLL_CAP = 0.01

_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
_RETRIED = (errno.EIO, errno.ENOLCK)
_VANISHED = (errno.ENOENT, errno.ESTALE)
_MUTEX_FLAGS = os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW
_PROBE_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_CLAIM_FLAGS = os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW

# Names of name and member files, as tempfile.mkstemp makes them: "tmp" + 8 of these.
NAME_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789_"
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
            err = error.errno
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
                    _log("error",
                        "flock on %s failed with %s (try %d of %d); retrying in %g s",
                        where, os.strerror(err), failures, max_tries, backoff)
                    if deadline is not None and left < backoff:
                        time.sleep(left)
                        raise TimeoutError(
                            f"timed out retrying the lock on {where} after {os.strerror(err)}"
                        ) from None
                    time.sleep(backoff)
                    backoff = min(backoff * 2, max_backoff)
                    continue
                _log("critical",
                    "giving up on flock of %s after %d tries: %s. %s",
                    where, failures, os.strerror(err),
                    "ENOLCK usually means an NFS mount without a working lock daemon (lockd)"
                    if err == errno.ENOLCK else
                    "EIO from flock is typical of a Ceph MDS in trouble; Ceph is not safe for locks")
            raise OSError(err, os.strerror(err), path) from None


def lock(fd: int, block: bool, shared: bool, timeout: float | None, path: str | None) -> None:
    _lock_fd(fd, block, shared, _deadline_of(timeout), path)


def unlock_and_close(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError as error:
        os.close(fd)
        if error.errno not in _RETRIED:
            raise
        return
    os.close(fd)


def _is_same(fd: int, path: str) -> bool | None:
    """True if path names the file open at fd, False if another file, None if nothing.

    A symlink now at path is another file.
    """
    try:
        held = os.fstat(fd)
        named = os.stat(path, follow_symlinks=False)
    except OSError as error:
        if error.errno in _VANISHED:
            return None
        raise
    return held.st_dev == named.st_dev and held.st_ino == named.st_ino


def same_file(fd: int, path: str) -> bool:
    return bool(_is_same(fd, path))


_statfs = None


def _load_statfs():  # type: ignore[no-untyped-def]
    import ctypes  # only when first needed: it costs milliseconds to import

    call = ctypes.CDLL(None, use_errno=True).statfs

    def statfs_type(path: str) -> int:
        # struct statfs opens with f_type, a C long, on every Linux ABI; 256 bytes hold it all.
        buffer = ctypes.create_string_buffer(256)
        if call(os.fsencode(path), buffer) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        return ctypes.c_long.from_buffer(buffer).value

    return statfs_type


def fs_type(path: str) -> int:
    """The f_type of statfs(2) for path (0 where this platform does not give one)."""
    global _statfs
    if not sys.platform.startswith("linux"):
        os.stat(path)  # the same errors for a missing path as on Linux
        return 0
    if _statfs is None:
        _statfs = _load_statfs()
    return _statfs(path)


def mutex_acquire(base_dir: str, filename: str, timeout: float | None) -> int:
    path = f"{base_dir}/{filename}"
    deadline = _deadline_of(timeout)
    while True:
        try:
            fd = os.open(path, _MUTEX_FLAGS, 0o666)
        except OSError as error:
            if error.errno == errno.ESTALE:
                continue
            if error.errno in (errno.ENOENT, errno.ENOTDIR):
                raise OSError(error.errno, error.strerror, base_dir) from None
            raise
        try:
            _lock_fd(fd, True, False, deadline, path)
            if _is_same(fd, path):
                return fd
        except OSError as error:
            os.close(fd)
            if error.errno == errno.ESTALE:
                continue
            raise
        except BaseException:
            os.close(fd)
            raise
        # The previous holder unlinked (or someone replaced) the file while we waited.
        os.close(fd)


def release(fd: int, base_dir: str, filename: str) -> None:
    path = f"{base_dir}/{filename}"
    try:
        sameness = _is_same(fd, path)
        if sameness:
            os.unlink(path)
        else:
            _log("error",
                "lock file %s was %s while its lock was held (by pid %d): "
                "something outside the locking protocol touched it",
                path, "removed" if sameness is None else "replaced", os.getpid())
    finally:
        unlock_and_close(fd)


def _probe(path: str, remove_dead: bool) -> bool | None:
    """Is the file at path held by a live owner (True, else False; None if absent)?

    Only a shared non-blocking lock is tried, and let go at once.  If remove_dead, a
    file nobody holds belongs to a dead owner and is removed, but only while it is
    still the file at that path.
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
            os.close(fd)
            return True
        except BaseException:
            os.close(fd)
            raise
        if not remove_dead:
            unlock_and_close(fd)
            return False
        try:
            sameness = _is_same(fd, path)
            if sameness:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        finally:
            unlock_and_close(fd)
        if sameness is not False:
            return False if sameness else None
        # A new file took the name between our open and our check: look at that one.


def held(directory: str, name: str, remove_dead: bool) -> bool | None:
    return _probe(f"{directory}/{name}", remove_dead)


def claim(directory: str, make_directory: bool) -> tuple[int, str]:
    if make_directory:
        try:
            os.mkdir(directory, 0o777)
        except FileExistsError:
            pass
    for _ in range(CLAIM_TRIES):
        name = "tmp" + "".join(NAME_CHARACTERS[byte % 37] for byte in os.urandom(8))
        path = f"{directory}/{name}"
        try:
            fd = os.open(path, _CLAIM_FLAGS, 0o600)
        except OSError as error:
            if error.errno in (errno.EEXIST, errno.ESTALE):
                continue
            raise OSError(error.errno, error.strerror, directory) from None
        try:
            _lock_fd(fd, False, False, None, path)
            if _is_same(fd, path):
                return fd, name
        except BlockingIOError:
            pass  # a poller is looking at it, and will remove it
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise FileExistsError(
        errno.EEXIST, f"no free name for a new file after {CLAIM_TRIES} tries", directory
    )


def arena_scan(directory: str) -> bool:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return True
    for name in names:
        if not name.startswith(".") and _probe(f"{directory}/{name}", True):
            return False
    return True
