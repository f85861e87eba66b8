"""Pure-Python core: the package's system calls and hot loops, over the os and fcntl modules.

Twin of csrc/_core_c.pyx: the same classes, functions, signatures and behaviour.  Every
failure is handed to toil_threading._retry, as the compiled core does.  Python already
releases the GIL around each of these calls and retries EINTR after running the signal
handlers (PEP 475), so a Ctrl-C during a wait raises KeyboardInterrupt here without help.

Every operation works relative to a directory opened once (a Directory), and every
descriptor belongs to an owner from the moment it exists: an owner keeps its descriptors
in a list of holders, objects that close their descriptor in C when closed or dropped
(see _open_into), so an exception raised at any line, a signal handler's included,
leaves a descriptor either owned or closed, and no finalizer of ours ever runs.
"""

import errno
import fcntl
import os
import stat
import sys

from . import _errors, _retry
from ._links import open_linked_directory
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
    FIGURE_FILE_BYTES,
    LOCK_FLAGS_KEPT,
    MALFORMED,
    MUTEX_FILE_MODE,
    NAME_CHARACTERS,
    NAME_FILE_MODE,
    NAME_LENGTH,
    NAME_PREFIX,
    NOT_REGULAR,
    OUTSIDE_ROOT,
    RECORD_LOCK,
    REMOVED,
    SHARED,
    STATUS_FILE_BYTES,
    TABLE_FILE_BYTES,
    TOO_LONG,
    WAIT,
    WORKING_DIRECTORY,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from functools import partial
    from typing import Any

    # What the caller hands in to say how to lock on a filesystem the first time it is
    # met: (fd of a file there, its device, the directory for messages) -> lock flags.
    Judge = Callable[[int, int, str], int]
else:
    from _functools import partial  # functools itself imports collections: slow

_VANISHED = (errno.ENOENT, errno.ESTALE)
# An unlink refused for a reason that is not the caller's error: another user's file in a
# sticky directory (EPERM, EACCES), or a read-only filesystem (EROFS).
_REFUSED_UNLINK = (errno.EPERM, errno.EACCES, errno.EROFS)
_COMMON = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
# Read and write: a waiter announces itself with a read lock (see announce_waiting).
_CREATE = os.O_CREAT | os.O_RDWR | _COMMON
_WRITE = os.O_WRONLY | _COMMON
_PROBE = os.O_RDONLY | _COMMON
_CLAIM = os.O_CREAT | os.O_EXCL | os.O_RDWR | _COMMON
# A directory is opened only to work relative to it: O_PATH, the cheapest open (where
# there is one); a listing opens it again, readable.
_DIRECTORY = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
_LISTING = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

# A file still at its name (_SAME), gone from it (_GONE), or another file there (_REPLACED).
_SAME, _GONE, _REPLACED = 0, 1, 2
# What a lock call reports when the lock was had: at once, or after waiting for it.
_HAD, _WAITED = 0, 1
# Why a new lock file was let go: lost to another process after waiting for it (_LOST), or
# found gone or changed at once, as a shared filesystem's stale cache makes it (_STALE).
_LOST, _STALE = -1, -2

# What holds each descriptor: the standard library's one object that owns any descriptor
# (fromfd) and closes it in C at close() or when dropped.  Its polling is never used.
if sys.platform.startswith("linux"):
    from select import epoll as _Holder
else:  # the BSDs and macOS
    from select import kqueue as _Holder

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


# Descriptors and their owners.


def _open_into(owner: "list[_Holder]", path: str, flags: int, mode: int, dir_fd: int) -> int:
    """Open path (relative to dir_fd, which may be WORKING_DIRECTORY) and add a holder of
    the descriptor to owner, in one step of C: no Python line, and so no signal handler,
    runs between the open and the holder taking it.  Returns the descriptor."""
    opened = map(partial(os.open, flags=flags, mode=mode, dir_fd=dir_fd), (path,))
    owner.extend(map(_Holder.fromfd, opened))
    return owner[-1].fileno()


def _close_all(owner: "list[_Holder]") -> None:
    """Close owner's descriptors (a holder dropped halfway closes its own)."""
    while owner:
        owner.pop().close()


class Directory:
    """An open directory: what an operation resolves once and works relative to.

    Without parent, path is opened with its last component not followed (a symbolic link
    there is followed only where its owner is trusted: see _links.open_linked_directory);
    with parent, path is one entry of parent, created first with mode when mode >= 0,
    never followed.  follow opens path as the kernel resolves it, links and all.  created
    says whether this call made the directory.
    """

    __slots__ = ("_fds", "created", "path")
    path: str
    created: bool

    def __init__(
        self, path: str, parent: "Directory | None" = None, mode: int = -1, follow: bool = False
    ) -> None:
        self._fds: list[_Holder] = []
        if parent is None:
            path = path.rstrip("/") or "/"  # a trailing slash would follow a link there
        self.path = path if parent is None else f"{parent.path}/{path}"
        at = WORKING_DIRECTORY if parent is None else parent.fd
        self.created = False
        if mode >= 0:
            try:
                os.mkdir(path, mode, dir_fd=at)
                self.created = True
            except FileExistsError:
                pass
            except OSError as error:
                raise _errors.error(error.errno or errno.EIO, self.path) from None
        flags = _DIRECTORY if follow else _DIRECTORY | os.O_NOFOLLOW
        try:
            _open_into(self._fds, path, flags, 0, at)
        except OSError as error:
            err = error.errno or errno.EIO
            if self.created:
                # Made a moment ago but not opened (out of descriptors, say): removed
                # again by rmdir, which removes only an empty directory.
                try:
                    os.rmdir(path, dir_fd=at)
                except OSError:
                    pass
            if parent is not None or follow or err not in (errno.ENOTDIR, errno.ELOOP):
                raise _errors.directory_error(err, self.path, at, path) from None
            self._fds.append(_Holder.fromfd(open_linked_directory(path)))

    @property
    def fd(self) -> int:
        return self._fds[0].fileno() if self._fds else -1

    def close(self) -> None:
        _close_all(self._fds)


# Locks: flock(2), and where a filesystem needs it an open-file-description record lock.


def _lock(
    fd: int,
    how: int,
    exclusive: bool,
    block: bool,
    deadline: "_retry.Deadline | None",
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


def _unlock(fd: int, locking: int) -> int:
    """Let go of every lock on fd: the errno worth reporting, or 0.  Closing releases the
    locks anyway, so an unlock failing with EIO/ENOLCK (lock daemon trouble) or ESTALE is
    not an error."""
    try:
        if locking & RECORD_LOCK:
            unlock_record(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError as error:
        failure = error.errno or errno.EIO
        return 0 if failure in (errno.EIO, errno.ENOLCK, errno.ESTALE) else failure
    return 0


def _let_go(owner: "list[_Holder]", locking: int, sole: bool = False) -> None:
    """Let go of every lock on owner's descriptor and close it.  A descriptor no other
    process shares (sole) is only closed: that alone lets its locks go, with one system
    call fewer."""
    failure = _unlock(owner[0].fileno(), locking) if owner and not sole else 0
    _close_all(owner)
    if failure:
        raise _errors.error(failure, None)


def lock(
    fd: int, block: bool, shared: bool, deadline: "_retry.Deadline | None", path: str | None
) -> None:
    busy = _lock(fd, FLOCK, not shared, block, deadline, path)
    if busy > _WAITED:
        raise _errors.error(busy, path)


def unlock_and_close(fd: int) -> None:
    # The caller's own descriptor, closed as the caller would close it (os.close).
    failure = _unlock(fd, 0)
    try:
        os.close(fd)
    except OSError:
        pass  # close(2) frees the descriptor whatever it returns
    if failure:
        raise _errors.error(failure, None)


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
        raise _errors.error(ctypes.get_errno(), None if isinstance(target, int) else target)
    return int(ctypes.c_long.from_buffer(buffer).value)


_libc: "Any" = None  # ctypes.CDLL of the C library, loaded when first needed


# How to lock on each filesystem met (its device): its lock flags, as the judge the
# caller hands in says, asked once.  Kept small: a process meeting more filesystems than
# LOCK_FLAGS_KEPT starts the table again.
_known_flags: dict[int, int] = {}


def _lock_flags(fd: int, device: int, directory: str, judge: "Judge") -> int:
    found = _known_flags.get(device)
    if found is None:
        found = judge(fd, device, directory)
        if len(_known_flags) >= LOCK_FLAGS_KEPT:
            _known_flags.clear()
        _known_flags[device] = found
    return found


def lock_flags(fd: int, directory: str, judge: "Judge") -> int:
    """The lock flags for the filesystem of the open file fd, in directory (judge says
    what they are, the first time a filesystem is met)."""
    return _lock_flags(fd, os.fstat(fd).st_dev, directory, judge)


def _found_at(dir_fd: int, name: str, reopen: bool) -> tuple[int, int, int] | None:
    """(device, inode, size) of the file name now names in dir_fd; None if nothing is
    there, (-1, -1, 0) for a symlink.  With reopen, the name is opened afresh (which a
    shared filesystem's server resolves, where stat(2) may answer from a cache)."""
    try:
        if not reopen:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                return (-1, -1, 0)
        else:
            probe: list[_Holder] = []
            try:
                info = os.fstat(_open_into(probe, name, _PROBE, 0, dir_fd))
            finally:
                _close_all(probe)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return (-1, -1, 0)
        if error.errno in _VANISHED:
            return None
        raise
    return (info.st_dev, info.st_ino, info.st_size)


def _sameness(
    fd: int,
    dir_fd: int,
    name: str,
    locking: int,
    removing: bool,
    shown: str,
    known: tuple[int, int] | None = None,
) -> tuple[int, int]:
    """Does name (relative to dir_fd) still name the locked file open at fd?  And the
    file's size.

    Acquiring on a local filesystem, the locked descriptor answers: nobody unlinks a lock
    file but its holder, so a file with one link is still at its name.  Before removing
    the entry (removing), its device and inode are compared with ours, everywhere; a
    shared filesystem's cached attributes may lie, so there the name is opened afresh.
    known, where given, is fd's (device, inode) from when it was locked (they never
    change): removing on a local filesystem, only the entry at name is looked at then.
    """
    size = 0
    try:
        if known is not None and removing and not locking & SHARED:
            held = known
        else:
            info = os.fstat(fd)
            held, size = (info.st_dev, info.st_ino), info.st_size
            if info.st_nlink == 0:
                return _GONE, size
            if info.st_nlink == 1 and not removing and not locking & SHARED:
                return _SAME, size
        found = _found_at(dir_fd, name, bool(locking & SHARED))
    except OSError as error:
        if error.errno == errno.ESTALE:
            return _GONE, size
        raise _errors.error(error.errno or errno.EIO, shown) from None
    if found is None:
        return _GONE, size
    if found[:2] != held:
        return _REPLACED, size
    return _SAME, found[2] if known is not None else size


def same_file(fd: int, path: str) -> bool:
    os.fstat(fd)  # the descriptor is at fault, not the path
    return _sameness(fd, WORKING_DIRECTORY, path, SHARED, True, path)[0] == _SAME


# global_mutex: the mutex file, opened, locked and verified, then unlinked and let go.


def _open_lock_file(
    owner: "list[_Holder]", directory: Directory, name: str, deadline: "_retry.Deadline | None"
) -> int:
    """Open (creating it if missing) the lock file name in directory, never through a
    symlink, into owner.

    Another user's file that we may not write is opened read-only, without O_CREAT
    (kernels with fs.protected_regular refuse O_CREAT on it in a sticky directory):
    flock works on any descriptor.  A directory whose filesystem makes no files (/proc)
    is an error at once.
    """
    flags = _CREATE
    tries = 0
    while True:
        try:
            return _open_into(owner, name, flags, MUTEX_FILE_MODE, directory.fd)
        except OSError as error:
            err = error.errno or errno.EIO
        path = f"{directory.path}/{name}"
        if err == errno.EACCES and flags != _PROBE:
            flags = _PROBE if flags == _WRITE else _WRITE
        elif err == errno.ENOENT and flags == _CREATE:
            # Nothing to open and nothing made: a shared filesystem's stale cache entry,
            # or a filesystem that makes no files; an exclusive create, which looks the
            # name up past any cache, tells which.
            flags = _CLAIM
        elif err == errno.ENOENT and flags == _CLAIM:
            raise _errors.cannot_create(directory.fd, directory.path, path)
        elif err == errno.ENOENT:
            # Refused creating it, then found none: the directory may not be ours to write,
            # or the file went away in between; creating once more tells which.
            tries += 1
            if tries > 1:
                raise _errors.error(errno.EACCES, path)
            flags = _CREATE
        elif err in (errno.ENXIO, errno.EISDIR):
            raise _errors.not_a_regular_file(path, "a lock file", directory.fd, name)
        elif err in (*_VANISHED, errno.EEXIST):
            if flags == _CLAIM:
                flags = _CREATE  # made by another meanwhile: open that
            tries += 1
            _retry.vanished(err, tries, deadline, directory.fd, directory.path, path)
        else:
            raise _errors.error(err, path)


def _lock_new(
    fd: int,
    directory: Directory,
    name: str,
    block: bool,
    deadline: "_retry.Deadline | None",
    judge: "Judge",
) -> tuple[int, tuple[int, int]]:
    """Check that fd is a regular file, lock it exclusively by its filesystem's lock flags
    and verify it is still at its name.  Returns the lock flags and the file's device and
    inode (which never change); or _LOST or _STALE when the file is not worth keeping
    (the caller closes it and starts again).  A wait on a local filesystem is announced,
    so that the holder keeps the file for us."""
    shown = f"{directory.path}/{name}"
    unknown = (0, 0)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _errors.not_a_regular_file(shown, "a lock file", directory.fd, name)
        locking = _lock_flags(fd, info.st_dev, directory.path, judge)
        had = _lock(fd, FLOCK, True, block, deadline, shown, locking == 0)
        if locking & RECORD_LOCK and had <= _WAITED:
            had = max(had, _lock(fd, RECORD, True, block, deadline, shown))
    except OSError as error:
        if error.errno in _VANISHED:
            return _STALE, unknown  # opened through a stale cache entry: the file is gone
        raise
    if had > _WAITED:
        return _LOST, unknown  # held, and not to be waited for (a poller looking at a new file)
    if _sameness(fd, directory.fd, name, locking, False, shown)[0] == _SAME:
        return locking, (info.st_dev, info.st_ino)
    return (_LOST if had == _WAITED else _STALE), unknown


def _unlink(dir_fd: int, name: str) -> int:
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
    owner: "list[_Holder]",
    directory: Directory,
    name: str,
    locking: int,
    keep_for_waiters: bool = False,
    sole: bool = False,
    report_lost: bool = True,
    known: tuple[int, int] | None = None,
) -> None:
    """Unlink the lock file owner holds if the entry at name is still it, then let go of
    it (always).  With keep_for_waiters, a file others announced they wait on stays, for
    them to lock; a sole descriptor is only closed (see _let_go).  report_lost says in the
    log when the file was removed or replaced by someone else while held; known is as
    for _sameness."""
    shown = f"{directory.path}/{name}"
    try:
        fd = owner[0].fileno()
        sameness, size = _sameness(fd, directory.fd, name, locking, True, shown, known)
        kept = keep_for_waiters and size > 0 and waiters_announced(fd)
        refused = _unlink(directory.fd, name) if sameness == _SAME and not kept else 0
        if refused in _REFUSED_UNLINK:
            _errors.kept(shown, refused)
        elif refused:
            sameness = _GONE
        if sameness != _SAME and report_lost:
            _errors.lost(shown, sameness == _REPLACED)
    finally:
        _let_go(owner, locking, sole)


class HeldMutex:
    """What global_mutex returns: a context manager holding the mutex file while entered.

    directory is where the mutex lives: a Directory the caller keeps open, or a path,
    opened once at each entry and kept until the exit, so that the release happens in the
    directory the mutex was taken in.  Dropped while entered (never exited), its
    descriptor is closed when collected, which lets the mutex go (the file stays, free,
    for the next holder to remove).
    """

    __slots__ = ("_directory", "_filename", "_forks", "_forks_made", "_held", "_identity",
                 "_judge", "_locking", "_opened", "_timeout")  # fmt: skip

    def __init__(
        self, directory: "Directory | str", filename: str, timeout: float | None, judge: "Judge"
    ) -> None:
        self._held: list[_Holder] = []  # the mutex file's descriptor, while held
        self._opened: list[Directory] = []  # the directory, when opened here from a path
        self._directory, self._filename, self._timeout = directory, filename, timeout
        self._judge = judge
        self._locking = self._forks = self._forks_made = 0
        self._identity = (0, 0)  # the mutex file's device and inode, once locked

    def __enter__(self) -> None:
        if self._held or self._opened:
            raise RuntimeError("this global_mutex() is already entered; call global_mutex() again")
        deadline = None if self._timeout is None else _retry.Deadline(self._timeout)
        try:
            if isinstance(self._directory, Directory):
                directory = self._directory
            else:
                self._opened.append(Directory(self._directory))
                directory = self._opened[0]
            stale = 0
            while True:
                fd = _open_lock_file(self._held, directory, self._filename, deadline)
                locking, identity = _lock_new(
                    fd, directory, self._filename, True, deadline, self._judge
                )
                if locking >= 0:
                    self._locking, self._identity = locking, identity
                    self._forks, self._forks_made = _forks, _forks_made
                    return
                # The previous holder unlinked (or someone replaced) the file while we
                # waited; or a stale cache showed us a file already gone: then pause.
                _close_all(self._held)
                stale = stale + 1 if locking == _STALE else 0
                if stale:
                    path = f"{directory.path}/{self._filename}"
                    _retry.vanished(errno.ESTALE, stale, deadline, directory.fd,
                                    directory.path, path)  # fmt: skip
        except BaseException:
            self._abandon()
            raise

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if not self._held:
            raise RuntimeError("this global_mutex() was not entered")
        self._end_hold()

    def _abandon(self) -> None:
        """Close what an entry that failed had opened (no lock is held)."""
        _close_all(self._held)
        while self._opened:
            self._opened.pop().close()

    def _end_hold(self) -> None:
        try:
            directory = self._opened[0] if self._opened else self._directory
            assert isinstance(directory, Directory)
            if self._forks != _forks:
                _close_all(self._held)  # entered before the fork that made us: the parent's
            else:
                # On a local filesystem: keep the file for announced waiters; and with no
                # fork since we took it, our descriptor is the only one: closing it lets
                # the lock go.
                local = self._locking == 0
                sole = local and self._forks_made == _forks_made
                _release_at(self._held, directory, self._filename, self._locking, local, sole,
                            True, self._identity)  # fmt: skip
        finally:
            self._abandon()


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


class Held:
    """A name or member file, made fresh in directory and locked by this process.

    It keeps directory, so that release() removes the file from the directory it was made
    in.  Dropped without release(), its descriptor is closed (the lock goes, the file
    stays: a dead name, removed by the next probe of it).
    """

    __slots__ = ("_fds", "_forks_made", "_identity", "_locking", "directory", "name")

    def __init__(self, directory: Directory, judge: "Judge") -> None:
        self._fds: list[_Holder] = []
        self.directory = directory
        self.name = ""
        self._locking = self._forks_made = 0
        self._identity = (0, 0)  # the file's device and inode, once locked
        # A name taken already (EEXIST), a file gone under a stale cache, or one a poller
        # is looking at: try another name, pausing from the second miss on, within bounds.
        misses = 0
        while True:
            name = _fresh_name()
            try:
                fd = _open_into(self._fds, name, _CLAIM, NAME_FILE_MODE, directory.fd)
            except OSError as error:
                err = error.errno or errno.EIO
                if err == errno.ENOENT:  # an exclusive create looks past any cache
                    raise _errors.cannot_create(
                        directory.fd, directory.path, directory.path
                    ) from None
                if err not in (errno.EEXIST, errno.ESTALE):
                    raise _errors.error(err, directory.path) from None
            else:
                try:
                    locking, identity = _lock_new(fd, directory, name, False, None, judge)
                except BaseException:
                    self._abandon(name)
                    raise
                if locking >= 0:
                    self.name, self._locking, self._identity = name, locking, identity
                    self._forks_made = _forks_made
                    return
                _close_all(self._fds)
                err = errno.ESTALE if locking == _STALE else errno.EEXIST
            misses += 1
            _retry.vanished(err, misses, None, directory.fd, directory.path, directory.path)

    def _abandon(self, name: str) -> None:
        """After a claim failed: remove the file just made, if the entry at its name is
        still it, and close it, so that a failed claim leaves nothing behind."""
        try:
            _release_at(self._fds, self.directory, name, 0)
        except OSError:
            pass  # closed whatever failed (see _release_at): the claim's error is the one told

    @property
    def held(self) -> bool:
        return bool(self._fds)

    @property
    def fd(self) -> int:
        return self._fds[0].fileno() if self._fds else -1

    def gone(self) -> bool:
        """Whether the file is gone from every directory (its directory was cleaned up)."""
        try:
            return not self._fds or os.fstat(self._fds[0].fileno()).st_nlink == 0
        except OSError:  # ESTALE: gone on the server
            return True

    def release(self) -> None:
        """Remove the file if the entry at its name is still it, and let go of it (a file
        already removed, with its directory by a cleanup, is nothing to report)."""
        if not self._fds:
            raise RuntimeError(f"{self.directory.path}/{self.name} is not held")
        # With no fork since the claim, our descriptor is the only one: closing it lets
        # the lock go.
        sole = self._locking == 0 and self._forks_made == _forks_made
        _release_at(self._fds, self.directory, self.name, self._locking, False, sole, False,
                    self._identity)  # fmt: skip

    def close(self) -> None:
        """Close without unlocking or removing (after a fork: the lock is the parent's)."""
        _close_all(self._fds)


def probe(directory: Directory, name: str, remove_dead: bool, judge: "Judge") -> int:
    """What the file at name in directory says of its owner: ALIVE, DEAD, REMOVED, DENIED
    or ABSENT (also for anything that is not a regular file: never ours).

    Only a shared non-blocking lock is tried, and let go at once.  With remove_dead, an
    unlocked empty file named like ours is removed, while it is still the one found."""
    shown = f"{directory.path}/{name}"
    replaced = 0
    while True:
        fds: list[_Holder] = []
        locking = 0
        try:
            try:
                fd = _open_into(fds, name, _PROBE, 0, directory.fd)
            except OSError as error:
                if error.errno in (*_VANISHED, errno.ELOOP, errno.ENXIO):
                    return ABSENT
                if error.errno in (errno.EACCES, errno.EPERM):
                    return DENIED
                raise _errors.error(error.errno or errno.EIO, shown) from None
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return ABSENT
            locking = _lock_flags(fd, info.st_dev, directory.path, judge)
            try:
                if _lock(fd, FLOCK, False, False, None, shown) > _WAITED:
                    return ALIVE
            except OSError as error:
                if error.errno in _VANISHED:
                    return ABSENT  # opened through a stale cache entry: the file is gone
                raise
            if locking & RECORD_LOCK and record_locked_elsewhere(fd):
                return ALIVE
            if not (remove_dead and info.st_size == 0 and _is_name(name)):
                return DEAD
            sameness = _sameness(fd, directory.fd, name, locking, True, shown)[0]
            if sameness == _SAME:
                return DEAD if _unlink(directory.fd, name) in _REFUSED_UNLINK else REMOVED
            if sameness == _GONE:
                return ABSENT
        finally:
            _let_go(fds, locking)
        # A new file took the name between our open and our check: look at that one.
        replaced += 1
        _retry.vanished(errno.ESTALE, replaced, None, directory.fd, directory.path, shown)


def scan(
    directory: Directory, remove_dead: bool, stop_at_live: bool, judge: "Judge"
) -> list[tuple[str, int]]:
    """Probe every entry of directory named like ours; with stop_at_live, stop at the
    first ALIVE one (a DENIED one is listed and passed, for the caller to judge)."""
    found = []
    fds: list[_Holder] = []  # a readable descriptor of the directory, while it is listed
    try:
        with os.scandir(_open_into(fds, ".", _LISTING, 0, directory.fd)) as listing:
            for entry in listing:
                if not (_is_name(entry.name) and entry.is_file(follow_symlinks=False)):
                    continue  # not ours: never counted, never removed
                state = probe(directory, entry.name, remove_dead, judge)
                if state != ABSENT:
                    found.append((entry.name, state))
                if stop_at_live and state == ALIVE:
                    break
    finally:
        _close_all(fds)
    return found


# cgroup files: small files of numbers, read whole.


# Figures from outside: one bounded read each, parsed as the compiled core parses them
# (csrc/figures.h).  Each answer is a tuple whose first item is 0, or the errno (or
# TOO_LONG, MALFORMED, NOT_REGULAR, OUTSIDE_ROOT) that says why the file gave nothing.

_FIGURE_OPEN = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_FIGURE_DIGITS = 18  # as in figures.h: any real figure has far fewer
_CPU_NUMBER_DIGITS = 7


def _open_beneath(owner: "list[_Holder]", directory: int, path: str) -> int:
    """The live system (directory is WORKING_DIRECTORY): path as the system resolves it.
    A captured root: path beneath it, one component at a time with no link followed and no
    "..", as figures.h does where the kernel has no openat2 (which refuses the same)."""
    if directory == WORKING_DIRECTORY:
        return _open_into(owner, path, _FIGURE_OPEN, 0, directory)
    if path.startswith("/") or ".." in path.split("/"):
        raise OSError(OUTSIDE_ROOT, os.strerror(OUTSIDE_ROOT), path)
    *parents, leaf = path.split("/")
    at = directory
    for component in parents:
        if component in ("", "."):
            continue
        try:
            at = _open_into(owner, component, _DIRECTORY | os.O_NOFOLLOW, 0, at)
        except NotADirectoryError:
            found = os.stat(component, dir_fd=at, follow_symlinks=False).st_mode
            err = errno.ELOOP if stat.S_ISLNK(found) else errno.ENOTDIR
            raise OSError(err, os.strerror(err), path) from None
    return _open_into(owner, leaf or ".", _FIGURE_OPEN | os.O_NOFOLLOW, 0, at)


def _read_figure_file(directory: int, path: str, size: int) -> "tuple[int, bytes]":
    """(0, the whole file) or (why not, b""): only a regular file, of at most size bytes,
    read to its end as figures.h reads it (a long /proc file comes a page per read)."""
    fds: list[_Holder] = []
    try:
        fd = _open_beneath(fds, directory, path)
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode):
            return NOT_REGULAR, b""
        if found.st_size > size:  # proc and sysfs files say 0
            return TOO_LONG, b""
        chunks: list[bytes] = []
        length = 0
        while length <= size:
            chunk = os.read(fd, size + 1 - length)
            if not chunk:
                return 0, b"".join(chunks)
            chunks.append(chunk)
            length += len(chunk)
        return TOO_LONG, b""
    except OSError as error:
        return error.errno or errno.EIO, b""
    finally:
        _close_all(fds)


def _digits(field: bytes, limit: int) -> "int | None":
    return int(field) if 0 < len(field) <= limit and field.isdigit() else None


def _one_line(text: bytes) -> bytes:
    """text without the one newline that may end it."""
    return text[:-1] if text.endswith(b"\n") else text


def _lines(text: bytes) -> "list[bytes]":
    return _one_line(text).split(b"\n") if text else []


def read_bounded(directory: int, path: str, limit: int) -> "tuple[int, str]":
    reason, text = _read_figure_file(directory, path, limit)
    return reason, text.decode("utf-8", "surrogateescape")


def cpu_max(directory: int, path: str) -> "tuple[int, int, int]":
    reason, text = _read_figure_file(directory, path, FIGURE_FILE_BYTES)
    fields = _one_line(text).split(b" ")
    if reason or len(fields) != 2:
        return reason or MALFORMED, 0, 0
    quota = -1 if fields[0] == b"max" else _digits(fields[0], _FIGURE_DIGITS)
    period = _digits(fields[1], _FIGURE_DIGITS)
    if quota is None or not period:
        return MALFORMED, 0, 0
    return 0, quota, period


def cfs_figure(directory: int, path: str) -> "tuple[int, int]":
    reason, text = _read_figure_file(directory, path, FIGURE_FILE_BYTES)
    body = _one_line(text)
    value = _digits(body[1:] if body.startswith(b"-") else body, _FIGURE_DIGITS)
    if reason or value is None:
        return reason or MALFORMED, 0
    return 0, -value if body.startswith(b"-") else value


def _cpu_list_count(text: bytes) -> "int | None":
    """How many CPUs a list ("0-3,8,10-11", empty for none) names, None if malformed."""
    count = 0
    for part in text.split(b",") if text else ():
        first, dash, last = part.partition(b"-")
        low = _digits(first, _CPU_NUMBER_DIGITS)
        high = _digits(last, _CPU_NUMBER_DIGITS) if dash else low
        if low is None or high is None or high < low:
            return None
        count += high - low + 1
    return count


def cpu_list_size(directory: int, path: str, key: str, limit: int) -> "tuple[int, int]":
    reason, text = _read_figure_file(directory, path, limit)
    if reason:
        return reason, 0
    if key:
        label = key.encode() + b":"
        line = next((line for line in text.split(b"\n") if line.startswith(label)), None)
        listed = None if line is None else line[len(label) :].lstrip(b" \t")
    else:
        listed = _one_line(text)
    count = None if listed is None else _cpu_list_count(listed)
    return (MALFORMED, 0) if count is None else (0, count)


def cgroup_membership(directory: int, path: str) -> "tuple[int, str | None, str | None]":
    reason, text = _read_figure_file(directory, path, STATUS_FILE_BYTES)
    if reason or b"\0" in text:
        return reason or MALFORMED, None, None
    v1 = v2 = None
    for line in _lines(text):
        number, _, rest = line.partition(b":")
        controllers, colon, path_found = rest.partition(b":")
        if _digits(number, _FIGURE_DIGITS) is None or not colon or not path_found.startswith(b"/"):
            return MALFORMED, None, None
        if int(number) == 0 and not controllers:
            v2 = v2 or os.fsdecode(path_found)
        elif v1 is None and b"cpu" in controllers.split(b","):
            v1 = os.fsdecode(path_found)
    return 0, v1, v2


def _unescaped(field: bytes) -> "bytes | None":
    """mountinfo's escapes ("\\040" is a space) undone; None for one that makes a NUL."""
    pieces = field.split(b"\\")
    out = [pieces[0]]
    for piece in pieces[1:]:
        code = piece[:3]
        if len(code) == 3 and code[0] in b"0123" and all(c in b"01234567" for c in code[1:]):
            if code == b"000":
                return None
            out.append(bytes((int(code, 8),)) + piece[3:])
        else:
            out.append(b"\\" + piece)
    return b"".join(out)


def _mount_line(line: bytes) -> "tuple[int, int, str, str, str, str, str, str] | None":
    """One mountinfo line's fields, None if malformed."""
    fields = line.split(b" ")
    if b"\0" in line or b"-" not in fields[6:]:
        return None
    separator = fields.index(b"-", 6)
    named, after = fields[: separator + 3], fields[separator + 3 :]
    major, colon, minor = fields[2].partition(b":")
    numbers = (fields[0], fields[1], major, minor)
    if len(named) < separator + 3 or b"" in named or len(after) > 1 or not colon:
        return None
    if None in [_digits(number, _FIGURE_DIGITS) for number in numbers]:
        return None
    root, point, source = (_unescaped(fields[i]) for i in (3, 4, separator + 2))
    if root is None or point is None or source is None:
        return None
    texts = (root, point, fields[separator + 1], source, fields[5], after[0] if after else b"")
    return (int(major), int(minor), *map(os.fsdecode, texts))  # type: ignore[return-value]


def mount_table(
    directory: int, path: str, mount_type: str
) -> "tuple[int, list[tuple[int, int, str, str, str, str, str, str]]]":
    reason, text = _read_figure_file(directory, path, TABLE_FILE_BYTES)
    if reason:
        return reason, []
    mounts = []
    for line in _lines(text):
        mount = _mount_line(line)
        if mount is None:
            return MALFORMED, []
        if not mount_type or mount[4] == mount_type:
            mounts.append(mount)
    return 0, mounts
