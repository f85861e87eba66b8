"""`toil-threading verify`: does each kind of lock exclude between two machines, really?

One machine holds a scratch file in the directory with both kinds of lock (`hold`); the
other tries to take each kind (`check`).  A lock the checker cannot take is one that
excludes across the two.  The scratch file names its holder, so the checker can tell a
live holder from a dead one's leftover; the holder removes it when done.

Whatever sits at the scratch file's name may be anyone's: it is read only as exactly the
record hold() writes, and anything else there is left alone, and said to be.  Processes
of one machine share a kernel, whose locks exclude between them whatever the filesystem
does between machines: a check there can show a lock failing, never one holding across
machines.
"""

import errno
import json
import math
import os
import socket
import stat
import time

from . import _errors, _impl
from ._filesystems import RECORD_LOCKS, STRATEGY_FLOCK_AND_RECORD, STRATEGY_REFUSED
from ._lockability import filesystem_report
from ._locks import FLOCK, RECORD, lock_call, unlock_record
from ._protocol import WORKING_DIRECTORY

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ._core_py import Directory

SCRATCH = "toil-threading-verify"
LONGEST_HOLD = 24 * 3600.0  # seconds: the most --hold takes, and so a record may claim
_CREATE = os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
_OPEN = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_BUSY = (errno.EAGAIN, errno.EACCES)
# The record hold() writes: each key, and the type of its value (bool is no int here).
_RECORD = {
    "host": str,
    "boot_id": str,
    "pid": int,
    "since": float,
    "until": float,
    "record_lock": bool,
}
_RECORD_LIMIT = 4096  # bytes: the record hold() writes is far shorter
_HOST_LIMIT = 255  # characters of a host name (Linux allows 64)
_BOOT_ID_LIMIT = 64  # characters of a boot id (a UUID: 36)
_PID_LIMIT = 1 << 22  # PID_MAX_LIMIT: no Linux PID is larger


class NotVerified(RuntimeError):
    """Nothing to check against (no live holder), or something not ours at the scratch
    file's name: the message says which."""


def _take(fd: int, how: int, exclusive: bool) -> bool:
    """Take a lock without waiting; False if someone holds it (OSError for other errors)."""
    err = lock_call(fd, how, exclusive, False)
    if err in _BUSY:
        return False
    if err:
        raise OSError(err, os.strerror(err))
    return True


def _boot_id() -> str:
    """This kernel's boot id ("" where it cannot be read): every container of a machine
    shares it, whatever their host names."""
    reason, text = _impl.core.read_bounded(
        WORKING_DIRECTORY, "/proc/sys/kernel/random/boot_id", _BOOT_ID_LIMIT
    )
    return "" if reason else text.strip()


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")  # NaN and the infinities JSON lacks


def _record_in(raw: bytes) -> "dict[str, Any] | None":
    """The holder's record in raw, if it is exactly what hold() writes (those keys, those
    types, finite times of a hold within bounds, a possible PID); None otherwise."""
    if len(raw) > _RECORD_LIMIT:
        return None
    try:
        record = json.loads(raw, parse_constant=_refuse_constant)
    except ValueError:  # not UTF-8, not JSON, NaN, or an integer too long to read
        return None
    if not isinstance(record, dict) or record.keys() != _RECORD.keys():
        return None
    if any(type(record[key]) is not kind for key, kind in _RECORD.items()):
        return None
    since, until = record["since"], record["until"]
    return (
        record
        if 0 < len(record["host"]) <= _HOST_LIMIT
        and len(record["boot_id"]) <= _BOOT_ID_LIMIT
        and 0 < record["pid"] <= _PID_LIMIT
        and math.isfinite(since)
        and 0 < since <= until <= since + LONGEST_HOLD
        else None
    )


def _open_scratch(directory: "Directory", flags: int) -> int:
    try:
        return os.open(SCRATCH, flags, 0o644, dir_fd=directory.fd)
    except OSError as error:
        raise _errors.error(error.errno or errno.EIO, f"{directory.path}/{SCRATCH}") from None


def _opened_record(directory: "Directory") -> "tuple[int, dict[str, Any]]":
    """The scratch file in directory, opened without following a link, and the holder's
    record it holds.  NotVerified (left alone) where it holds anything else;
    FileNotFoundError where there is none."""
    path = f"{directory.path}/{SCRATCH}"
    fd = _open_scratch(directory, _OPEN)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _errors.not_a_regular_file(path, "a scratch file", directory.fd, SCRATCH)
        record = _record_in(os.read(fd, _RECORD_LIMIT + 1))
        if record is None:
            raise NotVerified(
                f"{path} holds something verify did not write (or has not written yet): left alone"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd, record


def _alive(holder: "dict[str, Any]") -> bool:
    """Whether the holder the record names can still be holding it."""
    if time.time() > holder["until"]:
        return False
    if holder["host"] == socket.gethostname():
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
    return True


def _create(directory: "Directory") -> int:
    """Create the scratch file in directory.  A dead holder's leftover goes first: a
    record as hold() writes it, whose hold is over, that nobody locks, removed while we
    lock it and only if it is still the one at its name.  Anything else there is an
    error, and left alone."""
    path = f"{directory.path}/{SCRATCH}"
    for _ in range(2):
        try:
            return _open_scratch(directory, _CREATE)
        except FileExistsError:
            pass
        try:
            fd, holder = _opened_record(directory)
        except FileNotFoundError:
            continue  # removed since: make it again
        try:
            if _alive(holder) or not _take(fd, FLOCK, True):
                raise OSError(errno.EBUSY, "another verify holds it", path)
            _remove_if_same(directory, os.fstat(fd))
        finally:
            os.close(fd)
    raise OSError(errno.EEXIST, "made again as fast as it was removed", path)


def _remove_if_same(directory: "Directory", held: os.stat_result) -> None:
    """Remove the scratch file if the entry at its name is still the file held (its
    device and inode), looked up relative to directory."""
    try:
        now = os.stat(SCRATCH, dir_fd=directory.fd, follow_symlinks=False)
    except FileNotFoundError:
        return  # someone removed it: nothing of ours is there
    if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
        os.unlink(SCRATCH, dir_fd=directory.fd)


def hold(directory_path: str, seconds: float, held: "Callable[[], None]") -> "dict[str, Any]":
    """Hold the scratch file with both kinds of lock for seconds (calling held once they
    are); then remove it, if what is at its name is still the file made here."""
    if not 0 < seconds <= LONGEST_HOLD:  # also refuses NaN
        raise ValueError(
            f"--hold takes more than 0 and at most {LONGEST_HOLD:g} seconds (24 hours),"
            f" not {seconds!r}"
        )
    directory = _impl.core.Directory(directory_path)
    try:
        fd = _create(directory)
        try:
            path = f"{directory.path}/{SCRATCH}"
            record = RECORD_LOCKS and _take(fd, RECORD, True)
            if not _take(fd, FLOCK, True):
                raise OSError(errno.EBUSY, "someone locked it as it was made", path)
            since = time.time()
            holder = {
                "host": socket.gethostname(),
                "boot_id": _boot_id(),
                "pid": os.getpid(),
                "since": since,
                "until": since + seconds,
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


def _same_machine(holder: "dict[str, Any]") -> bool:
    """Whether the holder may share this process's kernel: the same host name, or the
    same boot id."""
    ours = _boot_id()
    return holder["host"] == socket.gethostname() or (ours != "" and holder["boot_id"] == ours)


def check(directory_path: str) -> "dict[str, Any]":
    """Try each kind of lock on the held scratch file: what excluded us, and whether the
    package's strategy for the directory is safe with that ("safe" True or False; None
    where the holder shares this machine and every lock the strategy takes held: one
    machine cannot tell)."""
    directory = _impl.core.Directory(directory_path)
    path = f"{directory.path}/{SCRATCH}"
    try:
        fd, holder = _opened_record(directory)
    except FileNotFoundError:
        raise NotVerified(
            f"no holder in {directory.path}: start `toil-threading verify {directory.path}"
            " --hold 60` on another machine first"
        ) from None
    finally:
        directory.close()
    try:
        if not _alive(holder):
            raise NotVerified(f"{path} is the leftover of a holder that has ended")
        flock = not _take(fd, FLOCK, False)
        posix: bool | None = None
        if holder["record_lock"]:
            posix = not _take(fd, RECORD, False)
    finally:
        os.close(fd)  # lets go of whatever was taken
    strategy = filesystem_report(directory_path).strategy
    if strategy == STRATEGY_REFUSED:
        excluded = False
    elif strategy == STRATEGY_FLOCK_AND_RECORD:
        excluded = flock or bool(posix)
    else:
        excluded = flock
    same_host = _same_machine(holder)
    return {
        "holder": holder,
        "same_host": same_host,
        "flock": flock,
        "posix": posix,
        "strategy": strategy,
        "safe": None if excluded and same_host else excluded,
    }
