"""What the package says when something goes wrong: the exceptions both cores raise and
their words, LockTimeout, and the log lines.

Written once, so that the two cores word their errors the same; loaded on the first
failure (a process that meets none does not pay for it at start-up).
"""

import errno
import os
import stat
import sys

from ._protocol import ARENA_MUTEX_SUFFIX, LOGGER_NAME, MUTEX_PREFIX

# The logger records go to; install_into_toil() makes it Toil's module's.
logger_name = LOGGER_NAME

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


def fail_if_removed(dir_fd: int, directory: str) -> None:
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
    fail_if_removed(dir_fd, directory)
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


class LockTimeout(TimeoutError):
    """A lock was not had within the time given: a ``TimeoutError`` that says which lock,
    how long was waited and, where this machine can tell, who holds it.

    ``path``: the lock file (None for a descriptor passed to ``safe_lock``); ``name``: the
    mutex's name, or the arena's for an arena's wait (None for a descriptor); ``waited``:
    seconds from the start of the wait; ``holder``: the PID holding the lock, where
    /proc/locks shows one in this process's PID namespace, else None.
    """

    def __init__(
        self, path: str | None, name: str | None, waited: float, holder: int | None = None
    ) -> None:
        super().__init__()
        self.path, self.name, self.waited, self.holder = path, name, waited, holder

    def __str__(self) -> str:
        if self.name is not None:
            waiting = f"{self._kind()} {self.name!r} ({self.path})"
        else:
            waiting = f"the lock on {self.path}"
        held = "the holder is unknown" if self.holder is None else f"held by PID {self.holder}"
        return f"timed out after {self.waited:.3g} s waiting for {waiting}: {held}"

    def _kind(self) -> str:
        is_arena_mutex = self.path is not None and os.path.basename(self.path) == (
            f"{MUTEX_PREFIX}{self.name}{ARENA_MUTEX_SUFFIX}"
        )
        return "arena" if is_arena_mutex else "mutex"

    def __repr__(self) -> str:
        return (
            f"LockTimeout(path={self.path!r}, name={self.name!r}, waited={self.waited!r},"
            f" holder={self.holder!r})"
        )

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return type(self), (self.path, self.name, self.waited, self.holder)


def mutex_name(path: str | None) -> str | None:
    """The mutex a lock file path is the file of, None for another file."""
    filename = os.path.basename(path or "")
    return filename[len(MUTEX_PREFIX) :] if filename.startswith(MUTEX_PREFIX) else None
