"""What a core does when something goes wrong, written once and called only then.

The cores make the system calls and run the hot loops; when a call fails they hand the
failure here: retry decisions, pauses, log lines, hints and the exceptions themselves
live in this one place, so the two cores behave (and word their errors) the same.
Pauses go through time.sleep, which releases the GIL and lets Ctrl-C through.
"""

import errno
import os
import stat
import sys
import time

from ._protocol import (
    AGAIN,
    DEFAULT_RETRY_POLICY,
    LOGGER_NAME,
    POLL_CAP,
    POLL_FIRST,
    VANISHED_PAUSE_CAP,
    VANISHED_TRIES,
    WAIT,
)
from ._timeout import LockTimeout, mutex_name

# The logger records go to; install_into_toil() makes it Toil's module's.
logger_name = LOGGER_NAME

# (max_tries, backoff, max_backoff) for EIO and ENOLCK; the facade validates changes.
policy: tuple[int, float, float] = DEFAULT_RETRY_POLICY

# The likely cause named when giving up, by errno.
_GIVE_UP_HINTS = {
    errno.ENOLCK: "ENOLCK usually means an NFS mount without a working lock daemon (lockd)",
    errno.EIO: "EIO from flock is typical of a Ceph MDS in trouble; Ceph is not safe for locks",
}

# Clearer words than strerror's for the errors a hostile directory gives.
_MESSAGES = {
    errno.ELOOP: "a symbolic link is there, and locks never follow one",
}


def log(level: int, message: str, *args: object) -> None:
    # logging is imported only when something is worth saying: it costs milliseconds.
    # Below WARNING, nothing can be listening before something has imported it.
    if level < 30 and "logging" not in sys.modules:
        return
    import logging

    logging.getLogger(logger_name).log(level, message, *args)


def error(err: int, path: str | None) -> OSError:
    """The exception both cores raise for err on path (OSError picks the subclass)."""
    return OSError(err, _MESSAGES.get(err) or os.strerror(err), path)


def not_a_regular_file(path: str, wanted: str, dir_fd: int, name: str) -> OSError:
    """For a FIFO, socket, device or directory found where wanted (a lock file, a file to
    read) should be: name, relative to dir_fd (or WORKING_DIRECTORY), says which."""
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except OSError:
        mode = 0
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    return OSError(errno.EINVAL, f"not {wanted}: {kind} is there", path)


def directory_error(err: int, shown: str, dir_fd: int, name: str) -> OSError:
    """The error for a directory we may not open (name, relative to dir_fd, which may be
    WORKING_DIRECTORY); a symbolic link there (refused with ENOTDIR or ELOOP) is named as one."""
    if err in (errno.ENOTDIR, errno.ELOOP):
        try:
            if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                err = errno.ELOOP
        except OSError:
            pass
    return error(err, shown)


def open_linked_directory(path: str) -> int:
    """Open the directory path names where its last component is a symbolic link: followed
    only where the link belongs to this user or to root, who alone could have made a link
    they own (another user's link could point anywhere).  Everything is resolved once: the
    link's parent, the link itself (opened without following it), then its target relative
    to that parent.  Anything but a trusted link to a directory raises OSError."""
    parent, name = os.path.split(path.rstrip("/") or "/")
    held = []
    try:
        held.append(os.open(parent or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        held.append(os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=held[0]))
        link = os.fstat(held[1])
        if not stat.S_ISLNK(link.st_mode):
            raise error(errno.ENOTDIR, path)
        if link.st_uid not in (0, os.geteuid()):
            raise OSError(
                errno.ELOOP,
                f"a symbolic link of another user (uid {link.st_uid}) is there, and only this"
                " user's or root's are followed",
                path,
            )
        target = os.readlink("", dir_fd=held[1])
        return os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=held[0])
    except OSError as failure:
        if failure.filename is None:
            raise error(failure.errno or errno.EIO, path) from None
        raise
    finally:
        for fd in held:
            os.close(fd)


class Deadline:
    """When a wait with a timeout started, and when it must end (time.monotonic())."""

    __slots__ = ("started", "until")

    def __init__(self, timeout: float) -> None:
        self.started = time.monotonic()
        self.until = self.started + timeout

    def left(self) -> float:
        return self.until - time.monotonic()


def timed_out(
    deadline: Deadline, path: str | None, identity: tuple[int, int] | None
) -> LockTimeout:
    """The LockTimeout for a wait on the lock file at path, whose device and inode are
    identity (None where no file is there now): its holder is looked up in /proc/locks."""
    waited = time.monotonic() - deadline.started
    from ._locks import exclusive_flock_holders

    holder = None
    if identity is not None:
        holder = (exclusive_flock_holders() or {}).get(identity) or None  # 0: not our PIDs
    return LockTimeout(path, mutex_name(path), round(waited, 6), holder)


def _identity_of(fd: int) -> tuple[int, int] | None:
    try:
        info = os.fstat(fd)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _path_of(fd: int) -> str | None:
    """The kernel's name for a descriptor given without a path (for messages only)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def after_lock_call(
    err: int, block: bool, deadline: Deadline | None, path: str | None, fd: int, counts: list[int]
) -> int:
    """A core's lock call on fd failed with err (EINTR aside): what now?

    counts is the caller's [failures, polls] for this lock, kept up to date here.  Returns
    WAIT (busy, and blocking with no deadline), AGAIN (after polling toward the deadline,
    or after an EIO/ENOLCK back-off), or err itself (busy, and the caller would not wait).
    Raises OSError for any other error and once the EIO/ENOLCK tries are spent, and
    LockTimeout at the deadline.
    """
    if err in (errno.EAGAIN, errno.EACCES):  # busy (EWOULDBLOCK is EAGAIN)
        if not block:
            return err
        if deadline is None:
            return WAIT
        counts[1] += 1
        left = deadline.left()
        if left <= 0:
            raise timed_out(deadline, path or _path_of(fd), _identity_of(fd))
        time.sleep(min(POLL_FIRST * (1 << min(counts[1], 16)), POLL_CAP, left))
        return AGAIN
    if err in (errno.EIO, errno.ENOLCK):
        counts[0] += 1
        lock_failed(err, counts[0], deadline, path, fd)
        return AGAIN
    raise error(err, path)


def lock_failed(
    err: int, failures: int, deadline: Deadline | None, path: str | None, fd: int
) -> None:
    """A lock call on fd failed with EIO or ENOLCK for the failures-th time: pause, or
    give up.

    Gives up (OSError, after a critical log line naming the likely cause) once the
    policy's tries are spent, and with LockTimeout, after waiting out what is left, where
    the pause would pass the deadline.
    """
    where = path or f"fd {fd}"
    max_tries, backoff, max_backoff = policy
    reason = os.strerror(err)
    if failures >= max_tries:
        log(
            50,
            "giving up on the lock of %s after %d tries: %s. %s",
            where,
            failures,
            reason,
            _GIVE_UP_HINTS.get(err, ""),
        )
        raise error(err, where)
    pause = min(backoff * 2.0 ** min(failures - 1, 64), max_backoff)
    log(
        40,
        "the lock of %s failed with %s (try %d of %d); retrying in %g s",
        where,
        reason,
        failures,
        max_tries,
        pause,
    )
    if deadline is not None:
        left = deadline.left()
        if left < pause:
            time.sleep(max(left, 0.0))
            raise timed_out(deadline, path or _path_of(fd), _identity_of(fd))
    time.sleep(pause)


def vanished(
    err: int, tries: int, deadline: Deadline | None, dir_fd: int, directory: str, path: str
) -> None:
    """A file in directory (open at dir_fd) went away or clashed under us for the
    tries-th time.

    On a shared filesystem another client changes the directory under our cache (ENOENT,
    ESTALE, even EEXIST without O_EXCL); on any filesystem a waiter finds the file it
    locked unlinked by the holder it waited for: try again after a short pause.  A
    directory that was removed while we had it open is a FileNotFoundError naming it at
    once; running out of tries is the error itself, and running out of time a LockTimeout.
    """
    if err == errno.ENOENT:
        _fail_if_removed(dir_fd, directory)
    if deadline is not None and deadline.left() <= 0:
        try:
            info = os.stat(os.path.basename(path), dir_fd=dir_fd, follow_symlinks=False)
            identity: tuple[int, int] | None = (info.st_dev, info.st_ino)
        except OSError:
            identity = None
        raise timed_out(deadline, path, identity)
    if tries >= VANISHED_TRIES:
        raise error(err, path)
    if tries > 1:
        time.sleep(min(POLL_FIRST * (1 << min(tries - 2, 16)), VANISHED_PAUSE_CAP))


def _fail_if_removed(dir_fd: int, directory: str) -> None:
    """A FileNotFoundError naming directory (open at dir_fd) if it was removed."""
    try:
        gone = os.fstat(dir_fd).st_nlink == 0
    except OSError as missing:
        raise error(missing.errno or errno.ENOENT, directory) from None
    if gone:
        raise error(errno.ENOENT, directory)


def cannot_create(dir_fd: int, directory: str, path: str) -> OSError:
    """The error for ENOENT from an exclusive create of path in directory (open at dir_fd),
    which looks the name up past any cache: the directory was removed (raised here, naming
    it), or its filesystem makes no files, as /proc makes none."""
    _fail_if_removed(dir_fd, directory)
    return OSError(
        errno.ENOENT,
        "cannot create a file there: the directory exists, but its filesystem makes no files",
        path,
    )


def lost(path: str, replaced: bool) -> None:
    """Our lock file was removed or replaced by someone outside the protocol while held."""
    log(
        40,
        "lock file %s was %s while its lock was held (by pid %d): "
        "something outside the locking protocol touched it",
        path,
        "replaced" if replaced else "removed",
        os.getpid(),
    )


def kept(path: str, err: int) -> None:
    """Our lock file could not be unlinked (another user's, in a sticky directory; or on a
    read-only filesystem)."""
    log(10, "left %s in place: %s (the lock itself was released)", path, os.strerror(err))
