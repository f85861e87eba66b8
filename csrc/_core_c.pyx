# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: annotation_typing=False, auto_pickle=False, autotestdict=False
"""Compiled core of toil_threading: the package's system calls and hot loops, in C.

Twin of toil_threading/_core_py.py: the same classes, functions, signatures and behaviour.
Every system call that can block (on a hung network filesystem, any of them) runs without
the GIL; the common acquisition and release each run as one such stretch.  Every
operation works relative to a directory opened once, and a descriptor is stored in its
owner's field by the statement that opens it, in C: no Python runs between the two, so
an exception raised anywhere leaves it owned (and closed by its owner) or closed.  An interrupted
wait runs the Python signal handlers and goes on unless one of them raised, so Ctrl-C
gives KeyboardInterrupt promptly.  Every failure is handed to toil_threading._retry, as
the pure core does.
"""

from cpython.mem cimport PyMem_RawFree, PyMem_RawMalloc
from libc.stdint cimport int64_t
from libc.string cimport memchr, memcpy
from os import urandom
from sys import getfilesystemencodeerrors, getfilesystemencoding

from toil_threading import _protocol as protocol


cdef extern from "Python.h":
    # Runs the Python signal handlers (after EINTR); raises what one of them raised.
    int check_signals "PyErr_CheckSignals"() except -1
    bytes PyUnicode_EncodeFSDefault(object text)
    const char *PyUnicode_AsUTF8AndSize(object text, Py_ssize_t *size) except NULL
    bytes PyBytes_FromStringAndSize(const char *text, Py_ssize_t size)
    char *PyBytes_AS_STRING(object data)
    object PyUnicode_DecodeFSDefaultAndSize(const char *text, Py_ssize_t size)


cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        EINTR
        EIO
        ENOLCK
        EAGAIN
        EACCES
        EPERM
        ENOENT
        ENOTDIR
        ESTALE
        EEXIST
        ELOOP
        ENXIO
        EISDIR
        EBADF
        EROFS

cdef extern from "<fcntl.h>" nogil:
    int c_open "open"(const char *path, int flags, ...)
    int openat(int dirfd, const char *path, int flags, ...)
    enum:
        O_CREAT
        O_EXCL
        O_RDONLY
        O_RDWR
        O_WRONLY
        O_CLOEXEC
        O_NOFOLLOW
        O_NONBLOCK
        O_DIRECTORY
        AT_FDCWD
        AT_SYMLINK_NOFOLLOW
        AT_REMOVEDIR
        F_RDLCK
        F_WRLCK
        F_UNLCK
    int unlinkat(int dirfd, const char *path, int flags)

cdef extern from "<sys/file.h>" nogil:
    int flock(int fd, int operation)
    enum:
        LOCK_SH
        LOCK_EX
        LOCK_NB
        LOCK_UN

cdef extern from "<sys/stat.h>" nogil:
    ctypedef unsigned long dev_t
    ctypedef unsigned long ino_t
    struct stat:
        dev_t st_dev
        ino_t st_ino
        unsigned int st_mode
        unsigned long st_nlink
        long st_size
    int c_fstat "fstat"(int fd, stat *buf)
    int fstatat(int dirfd, const char *path, stat *buf, int flags)
    int mkdirat(int dirfd, const char *path, unsigned int mode)
    bint S_ISREG(unsigned int mode)
    bint S_ISLNK(unsigned int mode)

cdef extern from "compat.h" nogil:
    void set_errno(int value)
    struct statfs:
        long f_type
    int c_statfs "statfs"(const char *path, statfs *buf)
    int fstatfs(int fd, statfs *buf)
    int F_OFD_SETLK
    int F_OFD_SETLKW
    int O_PATH
    int count_forks()
    unsigned long forks()
    unsigned long forks_of_ours()
    int known_lock_flags(unsigned long long device)
    void keep_lock_flags(unsigned long long device, int locking, int kept)
    int LOCK_FLAGS_SLOTS
    int record_lock(int fd, int command, short kind)
    int record_locked_elsewhere(int fd)
    int announce_waiting(int fd)
    bint waiters_announced(int fd)

cdef extern from "<unistd.h>" nogil:
    int close(int fd)
    ssize_t read(int fd, void *buffer, size_t count)

cdef extern from "<dirent.h>" nogil:
    ctypedef struct DIR
    struct dirent:
        unsigned char d_type
        char *d_name
    DIR *fdopendir(int fd)
    dirent *readdir(DIR *dir)
    int closedir(DIR *dir)
    enum:
        DT_REG
        DT_UNKNOWN

# The protocol's facts, as C values for the hot paths.
cdef int MUTEX_FILE_MODE = protocol.MUTEX_FILE_MODE
cdef int NAME_FILE_MODE = protocol.NAME_FILE_MODE
cdef int MEMBERS_DIRECTORY_MODE = protocol.MEMBERS_DIRECTORY_MODE
cdef int SHARED = protocol.SHARED
cdef int RECORD_LOCK = protocol.RECORD_LOCK
cdef int ABSENT = protocol.ABSENT
cdef int ALIVE = protocol.ALIVE
cdef int DEAD = protocol.DEAD
cdef int REMOVED = protocol.REMOVED
cdef int DENIED = protocol.DENIED
cdef int WAIT_IN_KERNEL = protocol.WAIT
cdef int NAME_LENGTH = protocol.NAME_LENGTH
cdef int LOCK_FLAGS_KEPT = protocol.LOCK_FLAGS_KEPT
cdef bytes NAME_PREFIX = protocol.NAME_PREFIX.encode()
cdef bytes NAME_CHARACTERS = protocol.NAME_CHARACTERS.encode()

# toil_threading._retry and _errors, imported on the first failure or wait with a timeout:
# a process that never meets one (most of them) does not pay for importing them at
# start-up.
cdef object retry = None, errors = None


cdef object retry_module():
    """_retry; errno stays as the failed call left it (callers pass errno on)."""
    global retry, errors
    cdef int failure = errno
    if retry is None:
        from toil_threading import _errors, _retry  # they make system calls of their own
        retry, errors = _retry, _errors
        set_errno(failure)
    return retry


cdef object errors_module():
    """_errors; errno stays as the failed call left it (callers pass errno on)."""
    retry_module()
    return errors


cdef int COMMON = O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK
# Read and write: a waiter announces itself with a read lock (see announce_waiting).
cdef int CREATE = O_CREAT | O_RDWR | COMMON
cdef int WRITE = O_WRONLY | COMMON
cdef int PROBE = O_RDONLY | COMMON
cdef int CLAIM = O_CREAT | O_EXCL | O_RDWR | COMMON
# A directory is opened only to work relative to it: O_PATH, the cheapest open (where
# there is one); a listing opens it again, readable.
cdef int DIRECTORY = O_PATH | O_DIRECTORY | O_CLOEXEC
cdef int LISTING = O_RDONLY | O_DIRECTORY | O_CLOEXEC

count_forks()
assert 0 < LOCK_FLAGS_KEPT <= LOCK_FLAGS_SLOTS
assert AT_FDCWD == protocol.WORKING_DIRECTORY

# A file still at its path, gone from it, or another file there.
cdef enum Sameness:
    SAME
    GONE
    REPLACED

# The two kinds of lock taken.
cdef enum How:
    FLOCK
    RECORD

# What a lock call reports when the lock was had: at once, or after waiting for it.
cdef enum:
    HAD = 0
    WAITED = 1

# Why a new lock file was let go: lost to another process after waiting for it (LOST), or
# found gone or changed at once, as a shared filesystem's stale cache makes it (STALE).
cdef enum:
    LOST = -1
    STALE = -2


cdef inline bint vanished(int err) noexcept nogil:
    return err == ENOENT or err == ESTALE


cdef inline bint removal_refused(int err) noexcept nogil:
    """An unlink refused for a reason that is not the caller's error: another user's file
    in a sticky directory (EPERM, EACCES), or a read-only filesystem (EROFS)."""
    return err == EPERM or err == EACCES or err == EROFS


# Where the file-system encoding is UTF-8 (nearly everywhere), a str's cached UTF-8 form
# is its encoding: no work at all for most paths.
cdef bint UTF8_PATHS = (
    getfilesystemencoding() == "utf-8" and getfilesystemencodeerrors() == "surrogateescape"
)


cdef bytes encoded(str path):
    """path in the file-system encoding, refusing an embedded NUL as os.open does."""
    cdef Py_ssize_t size = 0
    cdef const char *text
    cdef bytes data
    try:
        if not UTF8_PATHS:
            raise UnicodeEncodeError("utf-8", "", 0, 0, "not the file-system encoding")
        text = PyUnicode_AsUTF8AndSize(path, &size)
        data = PyBytes_FromStringAndSize(text, size)
    except UnicodeEncodeError:  # lone surrogates (undecodable bytes), or another encoding
        data = PyUnicode_EncodeFSDefault(path)
    if memchr(<const char *>data, 0, len(data)) != NULL:
        raise ValueError(f"embedded null byte in path {path!r}")
    return data


cdef inline void close_quietly(int fd) noexcept nogil:
    """close(2), which frees the descriptor whatever it returns."""
    if fd >= 0:
        close(fd)


# Directories: what every operation resolves once and works relative to.

cdef class Directory:
    """An open directory: what an operation resolves once and works relative to.

    Without parent, path is opened with its last component not followed (a symbolic link
    there is followed only where its owner is trusted: see _retry.open_linked_directory);
    with parent, path is one entry of parent, created first with mode when mode >= 0,
    never followed.  follow opens path as the kernel resolves it, links and all.  created
    says whether this call made the directory.
    """
    cdef readonly int fd
    cdef readonly str path
    cdef readonly bint created

    def __cinit__(self):
        self.fd = -1

    def __init__(self, str path, Directory parent=None, int mode=-1, bint follow=False):
        cdef bytes name
        cdef const char *c_name
        cdef int at = AT_FDCWD, flags = DIRECTORY if follow else DIRECTORY | O_NOFOLLOW
        cdef int make_err = 0, err = 0
        if parent is None:
            path = path.rstrip("/") or "/"  # a trailing slash would follow a link there
            self.path = path
        else:
            at = parent.fd
            self.path = f"{parent.path}/{path}"
        name = encoded(path)
        c_name = name
        with nogil:
            if mode >= 0:
                if mkdirat(at, c_name, mode) == 0:
                    self.created = True
                else:
                    make_err = errno
            if make_err == 0 or make_err == EEXIST:
                self.fd = openat(at, c_name, flags)
                err = errno
                if self.fd < 0 and self.created:
                    # Made a moment ago but not opened (out of descriptors, say): removed
                    # again by rmdir, which removes only an empty directory.
                    unlinkat(at, c_name, AT_REMOVEDIR)
        if make_err != 0 and make_err != EEXIST:
            raise errors_module().error(make_err, self.path)
        if self.fd >= 0:
            return
        if parent is not None or follow or not (err == ENOTDIR or err == ELOOP):
            raise errors_module().directory_error(err, self.path, at, path)
        from toil_threading._links import open_linked_directory  # a rare case

        self.fd = open_linked_directory(path)

    def close(self):
        cdef int fd = self.fd
        self.fd = -1
        with nogil:
            close_quietly(fd)

    def __dealloc__(self):
        close_quietly(self.fd)


# Locks: flock(2), and where a filesystem needs it an open-file-description record lock.

cdef int lock_call(int fd, How how, bint exclusive, bint wait) noexcept nogil:
    """One flock or record-lock call: 0 when had, else the errno."""
    cdef int rc
    if how == FLOCK:
        rc = flock(fd, (LOCK_EX if exclusive else LOCK_SH) | (0 if wait else LOCK_NB))
    else:
        rc = record_lock(fd, F_OFD_SETLKW if wait else F_OFD_SETLK, F_WRLCK if exclusive else F_RDLCK)
    return 0 if rc == 0 else errno


cdef int lock_fd(
    int fd, How how, bint exclusive, bint block, object deadline, str path, bint announce=False,
    int first=0
) except -1:
    """Take a lock with the package's policy (_retry.after_lock_call): HAD or WAITED once
    had, or, without block, the errno saying it is busy.  With announce, a wait is
    announced first (announce_waiting), so the holder keeps the file for us.  first is
    what a try already made (by the quick path) failed with, or 0."""
    cdef int err = first, step
    cdef bint wait = False
    cdef list counts = [0, 0]
    while True:
        if first:
            first = 0
        else:
            with nogil:
                err = lock_call(fd, how, exclusive, wait)
        if err == 0:
            return WAITED if wait or counts[1] else HAD
        if err == EINTR:
            check_signals()
            continue
        if announce and block and (err == EAGAIN or err == EACCES):
            announce = False
            with nogil:
                announce_waiting(fd)
        step = retry_module().after_lock_call(err, block, deadline, path, fd, counts)
        if step > 0:
            return step
        wait = wait or step == WAIT_IN_KERNEL


cdef int let_go(int fd, int locking, bint sole=False) noexcept nogil:
    """Let go of every lock on fd and close it; the errno worth reporting, or 0.

    Closing releases the locks anyway, so an unlock failing with EIO/ENOLCK (lock daemon
    trouble) or ESTALE is not an error; close frees the descriptor whatever it returns.
    A descriptor no other process shares (sole) is only closed: that alone lets its locks
    go, with one system call fewer.
    """
    cdef int failure = 0
    if not sole:
        if locking & RECORD_LOCK and record_lock(fd, F_OFD_SETLK, F_UNLCK) != 0:
            failure = errno
        if flock(fd, LOCK_UN) != 0 and not failure:
            failure = errno
    close(fd)
    if failure == EIO or failure == ENOLCK or failure == ESTALE:
        return 0
    return failure


def lock(int fd, bint block, bint shared, object deadline, object path):
    cdef int err = lock_fd(fd, FLOCK, not shared, block, deadline, path)
    if err > WAITED:
        raise errors_module().error(err, path)


def unlock_and_close(int fd):
    cdef int failure
    with nogil:
        failure = let_go(fd, 0)
    if failure:
        raise errors_module().error(failure, None)


def fs_magic(object target):
    """statfs(2) (a path) or fstatfs(2) (a descriptor) f_type."""
    cdef statfs info
    cdef int rc, fd
    cdef bytes path
    cdef const char *c_path
    if isinstance(target, int):
        fd = target
        with nogil:
            rc = fstatfs(fd, &info)
    else:
        path = encoded(target)
        c_path = path
        with nogil:
            rc = c_statfs(c_path, &info)
    if rc != 0:
        raise errors_module().error(errno, None if isinstance(target, int) else target)
    return info.f_type


# How to lock on each filesystem met (its device): its lock flags, as the judge the
# caller hands in says, asked once and kept in compat.h's table, which the common paths
# read without the GIL.

cdef int lock_flags_of(int fd, dev_t device, str directory, object judge) except -2:
    cdef int found = known_lock_flags(device)
    if found >= 0:
        return found
    found = judge(fd, device, directory)
    keep_lock_flags(device, found, LOCK_FLAGS_KEPT)
    return found


def lock_flags(int fd, str directory, object judge):
    """The lock flags for the filesystem of the open file fd, in directory (judge says
    what they are, the first time a filesystem is met)."""
    cdef stat info
    cdef int rc
    with nogil:
        rc = c_fstat(fd, &info)
    if rc != 0:
        raise errors_module().error(errno, None)
    return lock_flags_of(fd, info.st_dev, directory, judge)


cdef Sameness compare(
    int fd, int dir_fd, const char *name, int locking, bint removing, int *err,
    long *size=NULL, const stat *known=NULL
) noexcept nogil:
    """Does name (relative to dir_fd) still name the locked file open at fd?

    Acquiring on a local filesystem, the locked descriptor answers: nobody unlinks a lock
    file but its holder, so a file with one link is still at its name.  Before removing
    the entry (removing), its device and inode are compared with ours, everywhere; a
    shared filesystem's cached attributes may lie, so there the name is opened afresh
    (which the server resolves).  Sets err when it cannot tell; a symlink is another file.
    Where size is given, it gets the file's size.  known, where given, is fd's fstat from
    when it was locked (a file's device and inode never change): removing on a local
    filesystem, only the entry at name is looked at then.
    """
    cdef stat held, named
    cdef int named_fd, rc
    err[0] = 0
    if known != NULL and removing and not locking & SHARED:
        held = known[0]
    else:
        if c_fstat(fd, &held) != 0:
            if errno != ESTALE:
                err[0] = errno
            return GONE
        if size != NULL:
            size[0] = held.st_size
        if held.st_nlink == 0:
            return GONE
        if held.st_nlink == 1 and not removing and not locking & SHARED:
            return SAME
    if locking & SHARED:
        named_fd = openat(dir_fd, name, PROBE)
        if named_fd < 0:
            if errno == ELOOP:
                return REPLACED
            if not vanished(errno):
                err[0] = errno
            return GONE
        rc = c_fstat(named_fd, &named)
        if rc != 0 and errno != ESTALE:
            err[0] = errno
        close(named_fd)
        if rc != 0:
            return GONE
    elif fstatat(dir_fd, name, &named, AT_SYMLINK_NOFOLLOW) != 0:
        if not vanished(errno):
            err[0] = errno
        return GONE
    elif S_ISLNK(named.st_mode):
        return REPLACED
    if named.st_dev != held.st_dev or named.st_ino != held.st_ino:
        return REPLACED
    if known != NULL and size != NULL:
        size[0] = named.st_size  # the same file: its size now
    return SAME


def same_file(int fd, str path):
    cdef bytes name = encoded(path)
    cdef const char *c_name = name
    cdef int err = 0, rc
    cdef Sameness sameness
    cdef stat info
    with nogil:
        rc = c_fstat(fd, &info)
    if rc != 0:  # the descriptor is at fault, not the path
        raise errors_module().error(errno, None)
    with nogil:
        sameness = compare(fd, AT_FDCWD, c_name, SHARED, True, &err)
    if err:
        raise errors_module().error(err, path)
    return sameness == SAME


# global_mutex: the mutex file, opened, locked and verified, then unlinked and let go.


cdef int open_lock_file(int dir_fd, str directory, str filename, bytes name, object deadline) except -1:
    """Open (creating it if missing) the lock file name in the directory open at dir_fd,
    never through a symlink.

    Another user's file that we may not write is opened read-only, without O_CREAT
    (kernels with fs.protected_regular refuse O_CREAT on it in a sticky directory):
    flock works on any descriptor.  A directory whose filesystem makes no files (/proc)
    is an error at once.
    """
    cdef int flags = CREATE, tries = 0, fd, err
    cdef const char *c_name = name
    while True:
        with nogil:
            fd = openat(dir_fd, c_name, flags, MUTEX_FILE_MODE)
            err = errno
        if fd >= 0:
            return fd
        path = f"{directory}/{filename}"
        if err == EINTR:
            check_signals()
        elif err == EACCES and flags != PROBE:
            flags = PROBE if flags == WRITE else WRITE
        elif err == ENOENT and flags == CREATE:
            # Nothing to open and nothing made: a shared filesystem's stale cache entry,
            # or a filesystem that makes no files; an exclusive create, which looks the
            # name up past any cache, tells which.
            flags = CLAIM
        elif err == ENOENT and flags == CLAIM:
            raise errors_module().cannot_create(dir_fd, directory, path)
        elif err == ENOENT:
            # Refused creating it, then found none: the directory may not be ours to write,
            # or the file went away in between; creating once more tells which.
            tries += 1
            if tries > 1:
                raise errors_module().error(EACCES, path)
            flags = CREATE
        elif err == ENXIO or err == EISDIR:
            raise errors_module().not_a_regular_file(path, "a lock file", dir_fd, filename)
        elif vanished(err) or err == EEXIST:
            if flags == CLAIM:
                flags = CREATE  # made by another meanwhile: open that
            tries += 1
            retry_module().vanished(err, tries, deadline, dir_fd, directory, path)
        else:
            raise errors_module().error(err, path)


cdef int lock_new(
    int fd, int dir_fd, str directory, str filename, bytes name, bint block, object deadline,
    object judge, stat *identity, int tried=0
) except -3:
    """Check that fd is a regular file, lock it exclusively by its filesystem's lock flags
    and verify it is still at its name.  Returns the lock flags; or LOST or STALE when the
    file is not worth keeping (the caller closes it and starts again).  A wait on a local
    filesystem is announced, so that the holder keeps the file for us.  identity gets fd's
    fstat (its device and inode never change); tried is what the quick path's try of the
    flock failed with, or 0."""
    cdef stat info
    cdef int rc, err = 0, locking, had
    cdef Sameness sameness
    cdef const char *c_name = name
    shown = f"{directory}/{filename}"
    with nogil:
        rc = c_fstat(fd, &info)
        err = errno
    if rc != 0:
        if vanished(err):
            return STALE  # opened through a stale cache entry: the file is gone
        raise errors_module().error(err, shown)
    if not S_ISREG(info.st_mode):
        raise errors_module().not_a_regular_file(shown, "a lock file", dir_fd, filename)
    try:
        locking = lock_flags_of(fd, info.st_dev, directory, judge)
        had = lock_fd(fd, FLOCK, True, block, deadline, shown, locking == 0, tried)
        if locking & RECORD_LOCK and had <= WAITED:
            had = max(had, lock_fd(fd, RECORD, True, block, deadline, shown))
    except OSError as error:
        if error.errno == ENOENT or error.errno == ESTALE:
            return STALE  # opened through a stale cache entry: the file is gone
        raise
    if had > WAITED:
        return LOST  # held, and not to be waited for (a poller looking at a new file)
    with nogil:
        sameness = compare(fd, dir_fd, c_name, locking, False, &err)
    if err:
        raise errors_module().error(err, shown)
    if sameness == SAME:
        identity[0] = info
        return locking
    return LOST if had == WAITED else STALE


cdef int release_at(
    int fd, int dir_fd, bytes name, str directory, str filename, int locking,
    bint keep_for_waiters=False, bint sole=False, int close_too=-1, const stat *known=NULL,
    bint report_lost=True
) except -1:
    """Unlink the lock file if the entry at name is still fd's file, then let go of it and
    close close_too (a directory opened for the hold, or -1): all of it before any Python
    runs, so nothing can leave the lock held or a descriptor open.  With keep_for_waiters,
    a file others announced they wait on stays, for them to lock; a sole descriptor is only
    closed (see let_go); known is as for compare.  report_lost says in the log when the
    file was removed or replaced by someone else while held.  directory and filename name
    the file in messages (joined only when one is needed)."""
    cdef int err = 0, unlink_err = 0, failure
    cdef long size = 0
    cdef Sameness sameness
    cdef const char *c_name = name
    with nogil:
        sameness = compare(fd, dir_fd, c_name, locking, True, &err, &size, known)
        if sameness == SAME and not (keep_for_waiters and size > 0 and waiters_announced(fd)):
            if unlinkat(dir_fd, c_name, 0) != 0:
                unlink_err = errno
        failure = let_go(fd, locking, sole)
        close_quietly(close_too)
    if not (err or unlink_err or failure or sameness != SAME):
        return 0
    shown = f"{directory}/{filename}"
    if removal_refused(unlink_err):
        errors_module().kept(shown, unlink_err)
        unlink_err = 0
    elif vanished(unlink_err):
        sameness, unlink_err = GONE, 0
    if sameness != SAME and not err and report_lost:
        errors_module().lost(shown, sameness == REPLACED)
    if err or unlink_err or failure:
        raise errors_module().error(err or unlink_err or failure, shown)
    return 0


cdef bint quick_lock(int fd, stat *info, int *tried) noexcept nogil:
    """The common acquisition, all without the GIL: the lock on fd is free, and fd is a
    regular file on a local filesystem already met that still has its one link (one
    fstat after the lock says all of it; info keeps it).  False (holding nothing) hands
    over to the general path; tried gets what the flock failed with (busy, or an error
    the general path must count as a failed try), or 0."""
    if flock(fd, LOCK_EX | LOCK_NB) != 0:
        tried[0] = errno
        return False
    tried[0] = 0
    if (
        c_fstat(fd, info) == 0 and S_ISREG(info.st_mode) and info.st_nlink == 1
        and known_lock_flags(info.st_dev) == 0
    ):
        return True
    flock(fd, LOCK_UN)
    return False


cdef bint quick_claim(int fd, stat *info) noexcept nogil:
    """The common claim, all without the GIL: fd is a file this process just created (so
    a regular one), its lock is free, it still has its one link (no poller removed it
    before the lock) and it is on a local filesystem already met (info keeps its fstat).
    False (holding nothing) hands over to the general path."""
    if flock(fd, LOCK_EX | LOCK_NB) != 0:
        return False
    if c_fstat(fd, info) == 0 and info.st_nlink == 1 and known_lock_flags(info.st_dev) == 0:
        return True
    flock(fd, LOCK_UN)
    return False


cdef class HeldMutex:
    """What global_mutex returns: a context manager holding the mutex file while entered.

    directory is where the mutex lives: a Directory the caller keeps open, or a path,
    opened once at each entry and kept until the exit, so that the release happens in the
    directory the mutex was taken in.  Dropped while entered (never exited), its
    descriptor is closed when collected, which lets the mutex go (the file stays, free,
    for the next holder to remove).
    """
    cdef Directory given, opened
    cdef str base_dir, filename
    cdef bytes base, name
    cdef object timeout, judge
    cdef int fd, own_dir, locking
    cdef stat identity  # the mutex file's fstat once locked (its device and inode)
    cdef unsigned long forks, forks_made

    def __cinit__(self):
        self.fd = self.own_dir = -1

    def __init__(self, object directory, str filename, object timeout, object judge):
        if isinstance(directory, Directory):
            self.given = directory
            self.base_dir = self.given.path
        else:
            self.base_dir = (<str?>directory).rstrip("/") or "/"  # a trailing slash follows
            self.base = encoded(self.base_dir)
        self.filename, self.timeout, self.judge = filename, timeout, judge
        self.name = encoded(filename)

    def __enter__(self):
        cdef int dir_fd = -1, locking = 0, stale = 0, tried = 0
        cdef bint quick = False
        cdef const char *name = self.name
        cdef const char *base = NULL
        if self.fd >= 0 or self.own_dir >= 0 or self.opened is not None:
            raise RuntimeError("this global_mutex() is already entered; call global_mutex() again")
        deadline = None if self.timeout is None else retry_module().Deadline(self.timeout)
        if self.given is not None:
            dir_fd = self.given.fd
        else:
            base = self.base
        with nogil:
            if base != NULL:
                self.own_dir = c_open(base, DIRECTORY | O_NOFOLLOW)
                dir_fd = self.own_dir
            if dir_fd >= 0:
                self.fd = openat(dir_fd, name, CREATE, MUTEX_FILE_MODE)
                quick = self.fd >= 0 and quick_lock(self.fd, &self.identity, &tried)
        try:
            if dir_fd < 0 and self.given is None:  # a link there, or an error to word
                self.opened = Directory(self.base_dir)
                dir_fd = self.opened.fd
            while not quick:
                if self.fd < 0:
                    self.fd = open_lock_file(dir_fd, self.base_dir, self.filename, self.name, deadline)
                locking = lock_new(self.fd, dir_fd, self.base_dir, self.filename, self.name, True,
                                   deadline, self.judge, &self.identity, tried)
                tried = 0
                if locking >= 0:
                    break
                # The previous holder unlinked (or someone replaced) the file while we
                # waited; or a stale cache showed us a file already gone: then pause.
                self.close_file()
                stale = stale + 1 if locking == STALE else 0
                if stale:
                    path = f"{self.base_dir}/{self.filename}"
                    retry_module().vanished(ESTALE, stale, deadline, dir_fd, self.base_dir, path)
        except BaseException:
            self.abandon()
            raise
        self.locking, self.forks, self.forks_made = locking, forks(), forks_of_ours()

    def __exit__(self, exc_type, exc, traceback):
        if self.fd < 0:
            raise RuntimeError("this global_mutex() was not entered")
        self.end_hold()

    def __dealloc__(self):
        close_quietly(self.fd)
        close_quietly(self.own_dir)

    cdef void close_file(self) noexcept:
        cdef int fd = self.fd
        self.fd = -1
        with nogil:
            close_quietly(fd)

    cdef void abandon(self) noexcept:
        """Close what an entry that failed had opened (no lock is held)."""
        cdef int fd = self.fd, own = self.own_dir
        self.fd = self.own_dir = -1
        with nogil:
            close_quietly(fd)
            close_quietly(own)
        self.opened = None

    cdef int end_hold(self) except -1:
        cdef int fd = self.fd, own = self.own_dir
        cdef int dir_fd = own
        cdef bint local, sole
        self.fd = self.own_dir = -1
        if dir_fd < 0:
            dir_fd = (self.given if self.opened is None else self.opened).fd
        try:
            if self.forks != forks():
                with nogil:  # entered before the fork that made us: the lock is the parent's
                    close(fd)
                    close_quietly(own)
                return 0
            # On a local filesystem: keep the file for announced waiters; and with no fork
            # since we took it, our descriptor is the only one, so closing it lets the lock
            # go.
            local = self.locking == 0
            sole = local and self.forks_made == forks_of_ours()
            return release_at(fd, dir_fd, self.name, self.base_dir, self.filename,
                              self.locking, local, sole, own, &self.identity)
        finally:
            self.opened = None


# Process names and arena members: mkstemp-style files, each locked by its owner.

# Names come from a xorshift64* generator seeded from os.urandom once per process (again
# after a fork, so parent and child do not draw the same names): like tempfile's names,
# unique by O_EXCL, not secret, and without a getrandom(2) call for each one.
cdef unsigned long long name_state = 0
cdef unsigned long name_forks = 0


cdef str fresh_name():
    global name_state, name_forks
    cdef char text[32]
    cdef Py_ssize_t prefix = len(NAME_PREFIX), i
    cdef const char *characters = NAME_CHARACTERS
    cdef Py_ssize_t count = len(NAME_CHARACTERS)
    if name_state == 0 or name_forks != forks():
        name_state = int.from_bytes(urandom(8), "little") | 1
        name_forks = forks()
    memcpy(text, <const char *>NAME_PREFIX, prefix)
    for i in range(NAME_LENGTH):
        name_state ^= name_state >> 12
        name_state ^= name_state << 25
        name_state ^= name_state >> 27
        text[prefix + i] = characters[((name_state * 2685821657736338717ULL) >> 33) % count]
    return text[:prefix + NAME_LENGTH].decode("ascii")


cdef bint is_name(const char *name) noexcept nogil:
    """Named like a name or member file (so the package may have made it)."""
    cdef Py_ssize_t i, prefix = 3
    cdef char c
    if name[0] != b"t" or name[1] != b"m" or name[2] != b"p":
        return False
    for i in range(8):
        c = name[prefix + i]
        if not (b"a" <= c <= b"z" or b"0" <= c <= b"9" or c == b"_"):
            return False
    return name[prefix + 8] == 0


cdef class Held:
    """A name or member file, made fresh in directory and locked by this process.

    It keeps directory, so that release() removes the file from the directory it was made
    in.  Dropped without release(), its descriptor is closed (the lock goes, the file
    stays: a dead name, removed by the next probe of it).
    """
    cdef readonly Directory directory
    cdef readonly str name
    cdef int descriptor, locking
    cdef stat identity  # the file's fstat once locked (its device and inode)
    cdef unsigned long forks_made  # forks this process had made when it locked the file

    def __cinit__(self):
        self.descriptor = -1

    def __init__(self, Directory directory not None, object judge):
        cdef int err, locking, misses = 0, dir_fd = directory.fd
        cdef bytes name
        cdef const char *c_name
        cdef bint quick
        self.directory = directory
        self.name = ""
        # A name taken already (EEXIST), a file gone under a stale cache, or one a poller
        # is looking at: try another name, pausing from the second miss on, within bounds.
        while True:
            base = fresh_name()
            name = encoded(base)
            c_name = name
            with nogil:
                self.descriptor = openat(dir_fd, c_name, CLAIM, NAME_FILE_MODE)
                err = errno
                quick = self.descriptor >= 0 and quick_claim(self.descriptor, &self.identity)
            if quick:
                self.name, self.forks_made = base, forks_of_ours()
                return
            if self.descriptor < 0:
                if err == EINTR:
                    check_signals()
                    continue
                if err == ENOENT:  # an exclusive create looks past any cache
                    raise errors_module().cannot_create(dir_fd, directory.path, directory.path)
                if err != EEXIST and err != ESTALE:
                    raise errors_module().error(err, directory.path)
            else:
                try:
                    locking = lock_new(self.descriptor, dir_fd, directory.path, base, name, False,
                                       None, judge, &self.identity)
                except BaseException:
                    self.abandon(name, base)
                    raise
                if locking >= 0:
                    self.name, self.locking, self.forks_made = base, locking, forks_of_ours()
                    return
                self.close()
                err = ESTALE if locking == STALE else EEXIST
            misses += 1
            retry_module().vanished(err, misses, None, dir_fd, directory.path, directory.path)

    cdef int abandon(self, bytes name, str text) except -1:
        """After a claim failed: remove the file just made, if the entry at its name is
        still it, and close it, so that a failed claim leaves nothing behind."""
        cdef int fd = self.descriptor
        self.descriptor = -1
        try:
            release_at(fd, self.directory.fd, name, self.directory.path, text, 0)
        except OSError:
            pass  # closed whatever failed (see release_at): the claim's error is the one told
        return 0

    @property
    def held(self):
        return self.descriptor >= 0

    @property
    def fd(self):
        return self.descriptor

    def gone(self):
        """Whether the file is gone from every directory (its directory was cleaned up)."""
        cdef stat info
        cdef int rc, fd = self.descriptor
        if fd < 0:
            return True
        with nogil:
            rc = c_fstat(fd, &info)
        return rc != 0 or info.st_nlink == 0  # a failure is ESTALE: gone on the server

    def release(self):
        """Remove the file if the entry at its name is still it, and let go of it (a file
        already removed, with its directory by a cleanup, is nothing to report)."""
        cdef int fd = self.descriptor
        # With no fork since the claim, our descriptor is the only one: closing it lets
        # the lock go.
        cdef bint sole = self.locking == 0 and self.forks_made == forks_of_ours()
        if fd < 0:
            raise RuntimeError(f"{self.directory.path}/{self.name} is not held")
        self.descriptor = -1
        release_at(fd, self.directory.fd, encoded(self.name), self.directory.path, self.name,
                   self.locking, False, sole, -1, &self.identity, False)

    def close(self):
        """Close without unlocking or removing (after a fork: the lock is the parent's)."""
        cdef int fd = self.descriptor
        self.descriptor = -1
        with nogil:
            close_quietly(fd)

    def __dealloc__(self):
        close_quietly(self.descriptor)


cdef bint quick_probe(int dir_fd, const char *name, bint remove_dead, int *state) noexcept nogil:
    """The common probe, all without the GIL: a regular file on a local filesystem
    already met.  False (having changed nothing) hands over to the general path, which
    also words the errors."""
    cdef stat info, named
    cdef int fd = openat(dir_fd, name, PROBE)
    if fd < 0:
        return False
    if c_fstat(fd, &info) != 0 or not S_ISREG(info.st_mode) or known_lock_flags(info.st_dev) != 0:
        close(fd)
        return False
    if flock(fd, LOCK_SH | LOCK_NB) != 0:
        state[0] = ALIVE if errno == EAGAIN else -1
        close(fd)
        return state[0] == ALIVE
    if not (remove_dead and info.st_size == 0 and is_name(name)):
        state[0] = DEAD
    elif (
        fstatat(dir_fd, name, &named, AT_SYMLINK_NOFOLLOW) == 0
        and named.st_dev == info.st_dev and named.st_ino == info.st_ino
        and unlinkat(dir_fd, name, 0) == 0
    ):
        state[0] = REMOVED
    else:
        state[0] = -1
    flock(fd, LOCK_UN)
    close(fd)
    return state[0] >= 0


cdef int probe_at(
    Directory directory, bytes name, str text, bint remove_dead, object judge
) except -1:
    """What the file at name in directory says of its owner: ALIVE, DEAD, REMOVED, DENIED
    or ABSENT (also for anything that is not a regular file: never ours).

    Only a shared non-blocking lock is tried, and let go at once.  With remove_dead, an
    unlocked empty file named like ours is removed, while it is still the one found."""
    cdef int fd, err = 0, locking, rc, unlink_err, failure, dir_fd = directory.fd
    cdef stat info
    cdef Sameness sameness
    cdef const char *c_name = name
    cdef int replaced = 0
    shown = f"{directory.path}/{text}"
    while True:
        with nogil:
            fd = openat(dir_fd, c_name, PROBE)
            err = errno
        if fd < 0:
            if vanished(err) or err == ELOOP or err == ENXIO:
                return ABSENT
            if err == EACCES or err == EPERM:
                return DENIED
            raise errors_module().error(err, shown)
        locking = 0
        try:
            with nogil:
                rc = c_fstat(fd, &info)
                err = errno
            if rc != 0:
                raise errors_module().error(err, shown)
            if not S_ISREG(info.st_mode):
                return ABSENT
            locking = lock_flags_of(fd, info.st_dev, directory.path, judge)
            try:
                if lock_fd(fd, FLOCK, False, False, None, shown) > WAITED:
                    return ALIVE
            except OSError as error:
                if error.errno == ENOENT or error.errno == ESTALE:
                    return ABSENT  # opened through a stale cache entry: the file is gone
                raise
            if locking & RECORD_LOCK:
                with nogil:
                    rc = record_locked_elsewhere(fd)
                    err = errno
                if rc < 0:
                    raise errors_module().error(err, shown)
                if rc:
                    return ALIVE
            if not (remove_dead and info.st_size == 0 and is_name(c_name)):
                return DEAD
            unlink_err = 0
            with nogil:
                sameness = compare(fd, dir_fd, c_name, locking, True, &err)
                if not err and sameness == SAME and unlinkat(dir_fd, c_name, 0) != 0:
                    unlink_err = errno
            if err:
                raise errors_module().error(err, shown)
            if sameness == SAME:
                if removal_refused(unlink_err):
                    return DEAD
                if unlink_err and not vanished(unlink_err):
                    raise errors_module().error(unlink_err, shown)
                return REMOVED
            if sameness == GONE:
                return ABSENT
        finally:
            with nogil:
                failure = let_go(fd, locking)
            if failure:
                raise errors_module().error(failure, shown)
        # A new file took the name between our open and our check: look at that one.
        replaced += 1
        retry_module().vanished(ESTALE, replaced, None, dir_fd, directory.path, shown)


def probe(Directory directory not None, str name, bint remove_dead, object judge):
    cdef bytes path = encoded(name)
    cdef const char *c_path = path
    cdef int state = ABSENT, dir_fd = directory.fd
    cdef bint quick
    with nogil:
        quick = quick_probe(dir_fd, c_path, remove_dead, &state)
    if quick:
        return state
    return probe_at(directory, path, name, remove_dead, judge)


def scan(Directory directory not None, bint remove_dead, bint stop_at_live, object judge):
    """Probe every entry of directory named like ours; with stop_at_live, stop at the
    first ALIVE one (a DENIED one is listed and passed, for the caller to judge)."""
    cdef DIR *listing = NULL
    cdef dirent *entry
    cdef stat info
    cdef int err, state = ABSENT, rc, fd, dir_fd = directory.fd
    cdef bint quick
    cdef list found = []
    cdef bytes name
    with nogil:
        # A descriptor of its own (its own read offset), which closedir closes.
        fd = openat(dir_fd, ".", LISTING)
        if fd >= 0:
            listing = fdopendir(fd)
            if listing == NULL:
                err = errno
                close(fd)
                set_errno(err)
        err = errno
    if listing == NULL:
        raise errors_module().error(err, directory.path)
    try:
        while True:
            with nogil:
                set_errno(0)  # readdir says "error" only through errno
                entry = readdir(listing)
                err = errno
            if entry == NULL:
                if err:
                    raise errors_module().error(err, directory.path)
                return found
            if not is_name(entry.d_name):
                continue  # not ours: never counted, never removed
            if entry.d_type != DT_REG:
                if entry.d_type != DT_UNKNOWN:
                    continue
                with nogil:
                    rc = fstatat(dir_fd, entry.d_name, &info, AT_SYMLINK_NOFOLLOW)
                if rc != 0 or not S_ISREG(info.st_mode):
                    continue
            name = entry.d_name
            text = PyUnicode_DecodeFSDefaultAndSize(name, len(name))
            with nogil:
                quick = quick_probe(dir_fd, entry.d_name, remove_dead, &state)
            if not quick:
                state = probe_at(directory, name, text, remove_dead, judge)
            if state != ABSENT:
                found.append((text, state))
            if stop_at_live and state == ALIVE:
                return found
    finally:
        with nogil:
            closedir(listing)


# Small files (cgroup settings, /proc), read whole with the system calls.

# Figures from outside: one bounded read each, parsed in C (figures.h).  Each answer is a
# tuple whose first item is 0, or the errno (or protocol.TOO_LONG, MALFORMED, NOT_REGULAR,
# OUTSIDE_ROOT) that says why the file gave nothing; the rest are the figures.

cdef extern from "figures.h" nogil:
    int FIGURE_TOO_LONG
    int FIGURE_MALFORMED
    int FIGURE_NOT_REGULAR
    int FIGURE_OUTSIDE
    ssize_t figure_read(int directory, const char *path, char *buffer, size_t size)
    int parse_cpu_max(const char *text, size_t length, int64_t *quota, int64_t *period)
    int parse_cfs_figure(const char *text, size_t length, int64_t *value)
    int parse_keyed_cpu_list(const char *text, size_t length, const char *key, int64_t *count)
    int parse_cgroup_membership(
        const char *text, size_t length, const char **v1, size_t *v1_length,
        const char **v2, size_t *v2_length)
    struct mount_line:
        int64_t major, minor
        char *root
        char *point
        char *options
        char *type
        char *source
        char *super_options
        size_t root_length, point_length, options_length, type_length, source_length
        size_t super_options_length
    int parse_mount_line(char *at, char *line_end, mount_line *mount)

assert (FIGURE_TOO_LONG, FIGURE_MALFORMED, FIGURE_NOT_REGULAR, FIGURE_OUTSIDE) == (
    protocol.TOO_LONG, protocol.MALFORMED, protocol.NOT_REGULAR, protocol.OUTSIDE_ROOT
)
cdef size_t FIGURE_FILE_BYTES = protocol.FIGURE_FILE_BYTES
cdef size_t STATUS_FILE_BYTES = protocol.STATUS_FILE_BYTES
cdef size_t TABLE_FILE_BYTES = protocol.TABLE_FILE_BYTES


cdef class _FigureFile:
    """One file read whole into a buffer of its own (freed with it): text[:length], or
    reason, the errno of why it could not be read."""

    cdef char *text
    cdef ssize_t length
    cdef int reason

    def __cinit__(self, int directory, str path, size_t size):
        cdef bytes name = encoded(path)
        cdef const char *c_name = name
        cdef ssize_t got
        # One byte more than size: figure_read asks for it to tell a file too long, and
        # ends a file that fits with a NUL there.
        self.text = <char *>PyMem_RawMalloc(size + 1)
        if self.text == NULL:
            raise MemoryError()
        while True:
            with nogil:
                got = figure_read(directory, c_name, self.text, size)
            if got != -EINTR:
                break
            check_signals()
        self.length = got if got >= 0 else 0
        self.reason = -got if got < 0 else 0

    def __dealloc__(self):
        PyMem_RawFree(self.text)


cdef str decoded(const char *text, size_t length):
    return PyUnicode_DecodeFSDefaultAndSize(text, length)


def read_bounded(int directory, str path, Py_ssize_t limit):
    cdef _FigureFile found = _FigureFile(directory, path, limit)
    if found.reason:
        return found.reason, ""
    return 0, found.text[:found.length].decode("utf-8", "surrogateescape")


def cpu_max(int directory, str path):
    cdef _FigureFile found = _FigureFile(directory, path, FIGURE_FILE_BYTES)
    cdef int64_t quota = 0, period = 0
    cdef int reason = found.reason or parse_cpu_max(found.text, found.length, &quota, &period)
    if reason:
        return reason, 0, 0
    return 0, quota, period


def cfs_figure(int directory, str path):
    cdef _FigureFile found = _FigureFile(directory, path, FIGURE_FILE_BYTES)
    cdef int64_t value = 0
    cdef int reason = found.reason or parse_cfs_figure(found.text, found.length, &value)
    if reason:
        return reason, 0
    return 0, value


def cpu_list_size(int directory, str path, str key, Py_ssize_t limit):
    cdef bytes key_name = encoded(key)
    cdef _FigureFile found = _FigureFile(directory, path, limit)
    cdef int64_t count = 0
    cdef int reason = found.reason or parse_keyed_cpu_list(
        found.text, found.length, key_name, &count)
    if reason:
        return reason, 0
    return 0, count


def cgroup_membership(int directory, str path):
    cdef _FigureFile found = _FigureFile(directory, path, STATUS_FILE_BYTES)
    cdef const char *v1 = NULL
    cdef const char *v2 = NULL
    cdef size_t v1_length = 0, v2_length = 0
    cdef int reason = found.reason or parse_cgroup_membership(
        found.text, found.length, &v1, &v1_length, &v2, &v2_length)
    if reason:
        return reason, None, None
    return (
        0,
        None if v1 == NULL else decoded(v1, v1_length),
        None if v2 == NULL else decoded(v2, v2_length),
    )


def mount_table(int directory, str path, str mount_type):
    cdef _FigureFile found = _FigureFile(directory, path, TABLE_FILE_BYTES)
    cdef bytes wanted = encoded(mount_type)
    cdef char *at = found.text
    cdef char *end = found.text + found.length
    cdef char *line_end
    cdef mount_line mount
    if found.reason:
        return found.reason, []
    mounts = []
    while at < end:
        line_end = <char *>memchr(at, b"\n", end - at)
        if line_end == NULL:
            line_end = end
        if parse_mount_line(at, line_end, &mount):
            return FIGURE_MALFORMED, []
        if not wanted or mount.type[:mount.type_length] == wanted:
            mounts.append((
                mount.major,
                mount.minor,
                decoded(mount.root, mount.root_length),
                decoded(mount.point, mount.point_length),
                decoded(mount.type, mount.type_length),
                decoded(mount.source, mount.source_length),
                decoded(mount.options, mount.options_length),
                decoded(mount.super_options, mount.super_options_length),
            ))
        at = line_end + 1
    return 0, mounts
