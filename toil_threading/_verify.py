"""`toil-threading verify`: does each kind of lock exclude between two machines, really?

One machine holds a scratch file in the directory with both kinds of lock (`hold`); the
other tries to take each kind (`check`).  A lock the checker cannot take is one that
excludes across the two.  The scratch file names its holder, so the checker can tell a
live holder from a dead one's leftover; the holder removes it when done.
"""

import errno
import json
import os
import socket
import stat
import time

from . import _impl, _retry
from ._filesystems import FLOCK_AND_RECORD, REFUSE, filesystem_report
from ._locks import FLOCK, RECORD, RECORD_LOCKS, lock_call, unlock_record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ._core_py import Directory

SCRATCH = "toil-threading-verify"
_CREATE = os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
_OPEN = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_BUSY = (errno.EAGAIN, errno.EACCES)


class NoHolder(Exception):
    """No live holder in the directory: nothing to check against."""


def _take(fd: int, how: int, exclusive: bool) -> bool:
    """Take a lock without waiting; False if someone holds it (OSError for other errors)."""
    err = lock_call(fd, how, exclusive, False)
    if err in _BUSY:
        return False
    if err:
        raise OSError(err, os.strerror(err))
    return True


def _create(directory: "Directory") -> int:
    """Create the scratch file in directory; a leftover of a dead holder goes first: a
    regular file nobody locks, removed while we lock it and only if it is still the one at
    its name.  Anything else there (a link, a FIFO, another verify's file) is an error,
    left alone."""
    path = f"{directory.path}/{SCRATCH}"
    for _ in range(2):
        try:
            return _open_scratch(directory, _CREATE)
        except FileExistsError:
            fd = _open_scratch(directory, _OPEN)
            try:
                found = os.fstat(fd)
                if not stat.S_ISREG(found.st_mode):
                    raise _retry.not_a_regular_file(path, "a scratch file", directory.fd, SCRATCH)
                if not _take(fd, FLOCK, True):
                    raise OSError(errno.EBUSY, "another verify holds it", path) from None
                _remove_if_same(directory, found)
            finally:
                os.close(fd)
    raise OSError(errno.EEXIST, "made again as fast as it was removed", path)


def _open_scratch(directory: "Directory", flags: int) -> int:
    try:
        return os.open(SCRATCH, flags, 0o644, dir_fd=directory.fd)
    except OSError as error:
        raise _retry.error(error.errno or errno.EIO, f"{directory.path}/{SCRATCH}") from None


def _remove_if_same(directory: "Directory", held: os.stat_result) -> None:
    """Remove the scratch file if the entry at its name is still the file held."""
    now = os.stat(SCRATCH, dir_fd=directory.fd, follow_symlinks=False)
    if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
        os.unlink(SCRATCH, dir_fd=directory.fd)


def hold(directory_path: str, seconds: float, held: "Callable[[], None]") -> "dict[str, Any]":
    """Hold the scratch file with both kinds of lock for seconds (calling held once they
    are); then remove it."""
    directory = _impl.core.Directory(directory_path)
    try:
        fd = _create(directory)
        try:
            path = f"{directory.path}/{SCRATCH}"
            record = RECORD_LOCKS and _take(fd, RECORD, True)
            if not _take(fd, FLOCK, True):
                raise OSError(errno.EBUSY, "someone locked it as it was made", path)
            holder = {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "since": time.time(),
                "until": time.time() + seconds,
                "record_lock": record,
            }
            os.write(fd, json.dumps(holder).encode())
            os.fsync(fd)
            held()
            time.sleep(seconds)
            return holder
        finally:
            try:
                _remove_if_same(directory, os.fstat(fd))
            finally:
                if RECORD_LOCKS:
                    unlock_record(fd)
                os.close(fd)
    finally:
        directory.close()


def _alive(holder: "dict[str, Any]") -> bool:
    """Whether the holder the file names can still be holding it."""
    if time.time() > float(holder.get("until", 0)):
        return False
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder.get("pid", 0)), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
    return True


def check(directory: str) -> "dict[str, Any]":
    """Try each kind of lock on the held scratch file; what excluded us, and is the
    package's strategy for directory safe with that."""
    opened = _impl.core.Directory(directory)
    path = f"{opened.path}/{SCRATCH}"
    try:
        fd = _open_scratch(opened, _OPEN)
    except FileNotFoundError:
        raise NoHolder(
            f"no holder: start `toil-threading verify {directory} --hold 60`"
            " on another machine first"
        ) from None
    finally:
        opened.close()
    try:
        try:
            holder: dict[str, Any] = json.loads(os.read(fd, 4096) or b"{}")
        except ValueError:
            holder = {}
        if not holder or not _alive(holder):
            raise NoHolder(f"{path} is a dead holder's leftover, or not written yet")
        flock = not _take(fd, FLOCK, False)
        posix: bool | None = None
        if holder.get("record_lock"):
            posix = not _take(fd, RECORD, False)
    finally:
        os.close(fd)  # lets go of whatever was taken
    strategy = filesystem_report(directory).strategy
    if strategy == REFUSE:
        safe = False
    elif strategy == FLOCK_AND_RECORD:
        safe = flock or bool(posix)
    else:
        safe = flock
    return {
        "holder": holder,
        "same_host": holder.get("host") == socket.gethostname(),
        "flock": flock,
        "posix": posix,
        "strategy": strategy,
        "safe": safe,
    }
