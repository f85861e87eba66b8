"""The two kinds of lock, one call each, over Python's fcntl module.

flock(2), and the whole-file open-file-description record lock (F_OFD_SETLK, Linux's)
taken besides it where a filesystem needs one.  Used by the pure core and by the
command line's `verify`; the compiled core makes the same calls in C.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

FLOCK, RECORD = 0, 1
# Whether this system has open-file-description record locks at all.
RECORD_LOCKS = hasattr(fcntl, "F_OFD_SETLK")

# struct flock on 64-bit Linux: l_type, l_whence, l_start, l_len (0: to the end), l_pid.
_FLOCK_STRUCT = "hhqqi"


def _record(kind: int, length: int = 0) -> bytes:
    """A request for the first length bytes (0: the whole file)."""
    return struct.pack(_FLOCK_STRUCT, kind, os.SEEK_SET, 0, length, 0)


def lock_call(fd: int, how: int, exclusive: bool, wait: bool) -> int:
    """One flock or record-lock call: 0 when had, else the errno."""
    try:
        if how == FLOCK:
            op = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            fcntl.flock(fd, op if wait else op | fcntl.LOCK_NB)
        else:
            command = fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK
            fcntl.fcntl(fd, command, _record(fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK))
    except OSError as error:
        return error.errno or errno.EIO
    return 0


# A process about to wait for a mutex on a local filesystem says so: a read lock on the
# file's first byte, then a size of at least 1 so that a holder knows to look for such
# locks.  A holder that finds one keeps the file at release instead of unlinking it from
# under its waiters.


def announce_waiting(fd: int) -> None:
    """Best effort: nothing happens where it cannot be said (a read-only file)."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _record(fcntl.F_RDLCK, 1))
        os.ftruncate(fd, 1)
    except OSError:
        pass


def waiters_announced(fd: int) -> bool:
    try:
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _record(fcntl.F_WRLCK, 1))
    except OSError:
        return False
    return bool(struct.unpack(_FLOCK_STRUCT, answer)[0] != fcntl.F_UNLCK)


def unlock_record(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _record(fcntl.F_UNLCK))


def record_locked_elsewhere(fd: int) -> bool:
    """Does another open file description hold a write record lock on fd's file?"""
    answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _record(fcntl.F_RDLCK))
    return bool(struct.unpack(_FLOCK_STRUCT, answer)[0] != fcntl.F_UNLCK)
