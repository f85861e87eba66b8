# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: annotation_typing=False, auto_pickle=False, autotestdict=False
"""Compiled core of toil_threading: the package's system calls and hot loops, in C.

Twin of toil_threading/_core_py.py: the same functions, signatures and behaviour.  Every
system call that can block (on a hung network filesystem, any of them) runs without the
GIL; the common acquisition and release each run as one such stretch.  An interrupted
wait runs the Python signal handlers and goes on unless one of them raised, so Ctrl-C
gives KeyboardInterrupt promptly.  Every failure is handed to toil_threading._retry, as
the pure core does.
"""

from libc.string cimport memchr, memcpy, strrchr
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
    int mkdir(const char *path, unsigned int mode)
    bint S_ISREG(unsigned int mode)

cdef extern from "compat.h" nogil:
    void set_errno(int value)
    struct statfs:
        long f_type
    int c_statfs "statfs"(const char *path, statfs *buf)
    int fstatfs(int fd, statfs *buf)
    int F_OFD_SETLK
    int F_OFD_SETLKW
    int count_forks()
    unsigned long forks()
    unsigned long forks_of_ours()
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

cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    enum:
        CLOCK_MONOTONIC
    int clock_gettime(int clock, timespec *now)


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
cdef bytes NAME_PREFIX = protocol.NAME_PREFIX.encode()
cdef bytes NAME_CHARACTERS = protocol.NAME_CHARACTERS.encode()

# toil_threading._retry, imported on the first failure: a process that never meets one
# (most of them) does not pay for importing it at start-up.
cdef object retry = None


cdef object retry_module():
    """The module; errno stays as the failed call left it (callers pass errno to it)."""
    global retry
    cdef int failure = errno
    if retry is None:
        from toil_threading import _retry as module  # makes system calls of its own
        retry = module
        set_errno(failure)
    return retry


cdef int COMMON = O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK
# Read and write: a waiter announces itself with a read lock (see announce_waiting).
cdef int CREATE = O_CREAT | O_RDWR | COMMON
cdef int WRITE = O_WRONLY | COMMON
cdef int PROBE = O_RDONLY | COMMON
cdef int CLAIM = O_CREAT | O_EXCL | O_RDWR | COMMON
cdef int DIRECTORY = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC

count_forks()

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


cdef double monotonic() noexcept nogil:
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return now.tv_sec + now.tv_nsec * 1e-9


cdef inline bint vanished(int err) noexcept nogil:
    return err == ENOENT or err == ESTALE


# Where the file-system encoding is UTF-8 (nearly everywhere), a str's cached UTF-8 form
# is its encoding: no work at all for most paths.
cdef bint UTF8_PATHS = (
    getfilesystemencoding() == "utf-8" and getfilesystemencodeerrors() == "surrogateescape"
)


cdef bytes encoded(str path, str name=None):
    """path (joined with "/" and name, if given) in the file-system encoding, refusing an
    embedded NUL as os.open does."""
    cdef Py_ssize_t path_size = 0, name_size = 0
    cdef const char *path_text
    cdef const char *name_text = NULL
    cdef bytes data
    cdef char *out
    try:
        if not UTF8_PATHS:
            raise UnicodeEncodeError("utf-8", "", 0, 0, "not the file-system encoding")
        path_text = PyUnicode_AsUTF8AndSize(path, &path_size)
        if name is not None:
            name_text = PyUnicode_AsUTF8AndSize(name, &name_size)
        data = PyBytes_FromStringAndSize(NULL, path_size + (name_size + 1 if name_text else 0))
        out = PyBytes_AS_STRING(data)
        memcpy(out, path_text, path_size)
        if name_text:
            out[path_size] = b"/"
            memcpy(out + path_size + 1, name_text, name_size)
    except UnicodeEncodeError:  # lone surrogates (undecodable bytes), or another encoding
        data = PyUnicode_EncodeFSDefault(path if name is None else f"{path}/{name}")
    if memchr(<const char *>data, 0, len(data)) != NULL:
        raise ValueError(f"embedded null byte in path {path!r}")
    return data


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
    int fd, How how, bint exclusive, bint block, object deadline, str path, bint announce=False
) except -1:
    """Take a lock with the package's policy (_retry.after_lock_call): HAD or WAITED once
    had, or, without block, the errno saying it is busy.  With announce, a wait is
    announced first (announce_waiting), so the holder keeps the file for us."""
    cdef int err, step
    cdef bint wait = False
    cdef list counts = [0, 0]
    while True:
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


cdef int let_go(int fd, int strategy, bint sole=False) noexcept nogil:
    """Let go of every lock on fd and close it; the errno worth reporting, or 0.

    Closing releases the locks anyway, so an unlock failing with EIO/ENOLCK (lock daemon
    trouble) or ESTALE is not an error; close frees the descriptor whatever it returns.
    A descriptor no other process shares (sole) is only closed: that alone lets its locks
    go, with one system call fewer.
    """
    cdef int failure = 0
    if sole:
        return EBADF if close(fd) != 0 and errno == EBADF else 0
    if strategy & RECORD_LOCK and record_lock(fd, F_OFD_SETLK, F_UNLCK) != 0:
        failure = errno
    if flock(fd, LOCK_UN) != 0 and not failure:
        failure = errno
    if close(fd) != 0 and not failure and errno == EBADF:
        failure = EBADF
    if failure == EIO or failure == ENOLCK or failure == ESTALE:
        return 0
    return failure


cdef int unlock_close(int fd, int strategy) except -1:
    cdef int failure
    with nogil:
        failure = let_go(fd, strategy)
    if failure:
        raise retry_module().error(failure, None)
    return 0


def lock(int fd, bint block, bint shared, object deadline, object path):
    cdef int err = lock_fd(fd, FLOCK, not shared, block, deadline, path)
    if err > WAITED:
        raise retry_module().error(err, path)


def unlock_and_close(int fd):
    unlock_close(fd, 0)


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
        raise retry_module().error(errno, None if isinstance(target, int) else target)
    return info.f_type


# How to lock on each filesystem met (its device), decided once by _filesystems.  A small
# table, reused round-robin, so the common acquisition needs no Python at all.
DEF KEPT = 16
cdef dev_t kept_devices[KEPT]
cdef int kept_strategies[KEPT]
cdef int kept_count = 0, kept_next = 0


cdef int known_strategy(dev_t device) noexcept nogil:
    cdef int i
    for i in range(kept_count):
        if kept_devices[i] == device:
            return kept_strategies[i]
    return -1


cdef int strategy_of(int fd, dev_t device, str directory) except -2:
    global kept_count, kept_next
    cdef int found = known_strategy(device)
    if found >= 0:
        return found
    from toil_threading import _filesystems

    found = _filesystems.strategy_for(fd, device, directory)
    kept_devices[kept_next] = device
    kept_strategies[kept_next] = found
    kept_next = (kept_next + 1) % KEPT
    if kept_count < KEPT:
        kept_count += 1
    return found


cdef Sameness compare(
    int fd, int dir_fd, const char *name, int strategy, int *err, long *size=NULL
) noexcept nogil:
    """Does name (relative to dir_fd) still name the locked file open at fd?

    On a local filesystem the locked descriptor answers: nobody unlinks a lock file but
    its holder, so a file with one link is still at its path.  A shared filesystem's
    cached attributes may lie, so there the path is opened afresh (which the server
    resolves) and compared.  Sets err when it cannot tell; a symlink is another file.
    Where size is given, it gets the file's size.
    """
    cdef stat held, named
    cdef int named_fd, rc
    err[0] = 0
    if c_fstat(fd, &held) != 0:
        if errno != ESTALE:
            err[0] = errno
        return GONE
    if size != NULL:
        size[0] = held.st_size
    if held.st_nlink == 0:
        return GONE
    if held.st_nlink == 1 and not strategy & SHARED:
        return SAME
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
    return SAME if named.st_dev == held.st_dev and named.st_ino == held.st_ino else REPLACED


def same_file(int fd, str path):
    cdef bytes name = encoded(path)
    cdef const char *c_name = name
    cdef int err = 0
    cdef Sameness sameness
    cdef stat info
    if c_fstat(fd, &info) != 0:  # the descriptor is at fault, not the path
        raise retry_module().error(errno, None)
    with nogil:
        sameness = compare(fd, AT_FDCWD, c_name, SHARED, &err)
    if err:
        raise retry_module().error(err, path)
    return sameness == SAME


# global_mutex: the mutex file, opened, locked and verified, then unlinked and let go.


cdef int open_lock_file(str directory, str path, bytes name, object deadline) except -1:
    """Open (creating it if missing) the lock file at path, never through a symlink.

    Another user's file that we may not write is opened read-only, without O_CREAT
    (kernels with fs.protected_regular refuse O_CREAT on it in a sticky directory):
    flock works on any descriptor.
    """
    cdef int flags = CREATE, tries = 0, fd, err
    cdef const char *c_name = name
    while True:
        with nogil:
            fd = c_open(c_name, flags, MUTEX_FILE_MODE)
            err = errno
        if fd >= 0:
            return fd
        if err == EINTR:
            check_signals()
        elif err == EACCES and flags != PROBE:
            flags = WRITE if flags == CREATE else PROBE
        elif err == ENOENT and flags != CREATE:
            # Refused creating it, then found none: the directory may not be ours to write,
            # or the file went away in between; creating once more tells which.
            tries += 1
            if tries > 1:
                raise retry_module().error(EACCES, path)
            flags = CREATE
        elif err == ENXIO or err == EISDIR:
            raise retry_module().not_a_regular_file(path, "a lock file")
        elif vanished(err) or err == EEXIST:
            tries += 1
            retry_module().vanished(err, tries, deadline, directory, path)
        elif err == ENOTDIR:
            raise retry_module().error(err, directory)
        else:
            raise retry_module().error(err, path)


cdef int lock_new(
    int fd, str directory, bytes name, str shown, int dir_fd, bint block, object deadline
) except -3:
    """Check that fd is a regular file, lock it exclusively by its filesystem's strategy
    and verify it is still at its name.  Returns the strategy; or LOST or STALE when the
    file is not worth keeping (the caller closes it and starts again).  A wait on a local
    filesystem is announced, so that the holder keeps the file for us."""
    cdef stat info
    cdef int rc, err = 0, strategy, had
    cdef Sameness sameness
    cdef const char *c_name = name
    with nogil:
        rc = c_fstat(fd, &info)
        err = errno
    if rc != 0:
        if vanished(err):
            return STALE  # opened through a stale cache entry: the file is gone
        raise retry_module().error(err, shown)
    if not S_ISREG(info.st_mode):
        raise retry_module().not_a_regular_file(shown, "a lock file")
    try:
        strategy = strategy_of(fd, info.st_dev, directory)
        had = lock_fd(fd, FLOCK, True, block, deadline, shown, strategy == 0)
        if strategy & RECORD_LOCK and had <= WAITED:
            had = max(had, lock_fd(fd, RECORD, True, block, deadline, shown))
    except OSError as error:
        if error.errno == ENOENT or error.errno == ESTALE:
            return STALE  # opened through a stale cache entry: the file is gone
        raise
    if had > WAITED:
        return LOST  # held, and not to be waited for (a poller looking at a new file)
    with nogil:
        sameness = compare(fd, dir_fd, c_name, strategy, &err)
    if err:
        raise retry_module().error(err, shown)
    if sameness == SAME:
        return strategy
    return LOST if had == WAITED else STALE


cdef int release_at(
    int fd, int dir_fd, bytes name, str shown, int strategy, bint keep_for_waiters=False,
    bint sole=False
) except -1:
    """Unlink the lock file if it is still ours, then let go of it: all of it before any
    Python runs, so nothing can leave the lock held or the descriptor open.  With
    keep_for_waiters, a file others announced they wait on stays, for them to lock; a sole
    descriptor is only closed (see let_go).  shown names the file in messages (None: name,
    decoded, does)."""
    cdef int err = 0, unlink_err = 0, failure
    cdef long size = 0
    cdef Sameness sameness
    cdef const char *c_name = name
    with nogil:
        sameness = compare(fd, dir_fd, c_name, strategy, &err, &size)
        if sameness == SAME and not (keep_for_waiters and size > 0 and waiters_announced(fd)):
            if unlinkat(dir_fd, c_name, 0) != 0:
                unlink_err = errno
        failure = let_go(fd, strategy, sole)
    if shown is None and (err or unlink_err or failure or sameness != SAME):
        shown = PyUnicode_DecodeFSDefaultAndSize(c_name, len(name))
    if unlink_err == EPERM or unlink_err == EACCES:
        retry_module().kept(shown, unlink_err)
        unlink_err = 0
    elif vanished(unlink_err):
        sameness, unlink_err = GONE, 0
    if sameness != SAME and not err:
        retry_module().lost(shown, sameness == REPLACED)
    if err or unlink_err or failure:
        raise retry_module().error(err or unlink_err or failure, shown)
    return 0


cdef bint quick_lock(int fd, stat *info) noexcept nogil:
    """The common acquisition, all without the GIL: fd is a regular file on a local
    filesystem already met, its lock is free, and it still has its one link.  False
    (holding nothing) hands over to the general path."""
    if c_fstat(fd, info) != 0 or not S_ISREG(info.st_mode) or known_strategy(info.st_dev) != 0:
        return False
    if flock(fd, LOCK_EX | LOCK_NB) != 0:
        return False
    if c_fstat(fd, info) == 0 and info.st_nlink == 1:
        return True
    flock(fd, LOCK_UN)
    return False


cdef bint quick_claim(int fd) noexcept nogil:
    """The common claim, all without the GIL: fd is a file this process just created (so
    a regular one), its lock is free, it still has its one link (no poller removed it
    before the lock) and it is on a local filesystem already met.  False (holding
    nothing) hands over to the general path."""
    cdef stat info
    if flock(fd, LOCK_EX | LOCK_NB) != 0:
        return False
    if c_fstat(fd, &info) == 0 and info.st_nlink == 1 and known_strategy(info.st_dev) == 0:
        return True
    flock(fd, LOCK_UN)
    return False


cdef class HeldMutex:
    """What global_mutex returns: a context manager holding the mutex file while entered.

    Dropped while entered (never exited), it lets the mutex go when collected.
    """
    cdef readonly str base_dir, filename
    cdef object timeout
    cdef bytes name
    cdef int fd, strategy
    cdef unsigned long forks, forks_made

    def __cinit__(self):
        self.fd = -1

    def __init__(self, str base_dir, str filename, object timeout):
        self.base_dir, self.filename, self.timeout = base_dir, filename, timeout
        self.name = encoded(base_dir, filename)

    cdef str path(self):
        """The mutex file's path, for messages (made only when one is needed)."""
        return f"{self.base_dir}/{self.filename}"

    def __enter__(self):
        cdef int fd, strategy = 0, stale = 0
        cdef stat info
        cdef bint quick = False
        cdef const char *name = self.name
        if self.fd >= 0:
            raise RuntimeError("this global_mutex() is already entered; call global_mutex() again")
        deadline = None if self.timeout is None else monotonic() + <double>self.timeout
        with nogil:
            fd = c_open(name, CREATE, MUTEX_FILE_MODE)
            if fd >= 0:
                quick = quick_lock(fd, &info)
        while not quick:
            if fd < 0:
                fd = open_lock_file(self.base_dir, self.path(), self.name, deadline)
            try:
                strategy = lock_new(fd, self.base_dir, self.name, self.path(), AT_FDCWD, True, deadline)
            except BaseException:
                close(fd)
                raise
            if strategy >= 0:
                break
            # The previous holder unlinked (or someone replaced) the file while we waited;
            # or a stale cache showed us a file already gone: then pause, within bounds.
            close(fd)
            fd = -1
            stale = stale + 1 if strategy == STALE else 0
            if stale:
                retry_module().vanished(ESTALE, stale, deadline, self.base_dir, self.path())
        self.fd, self.strategy, self.forks, self.forks_made = fd, strategy, forks(), forks_of_ours()

    def __exit__(self, exc_type, exc, traceback):
        if self.fd < 0:
            raise RuntimeError("this global_mutex() was not entered")
        self.end_hold()

    def __del__(self):
        if self.fd >= 0:
            self.end_hold()

    cdef int end_hold(self) except -1:
        cdef int fd = self.fd
        cdef bint local, sole
        self.fd = -1
        if self.forks != forks():
            close(fd)  # entered before the fork that made us: the lock is the parent's
            return 0
        # On a local filesystem: keep the file for announced waiters; and with no fork since
        # we took it, our descriptor is the only one, so closing it lets the lock go.
        local = self.strategy == 0
        sole = local and self.forks_made == forks_of_ours()
        return release_at(fd, AT_FDCWD, self.name, None, self.strategy, local, sole)


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


cdef tuple claim_at(int dir_fd, str directory):
    """Create and lock a fresh name file in directory (relative to dir_fd if not AT_FDCWD).

    A name taken already (EEXIST), a file gone under a stale cache, or one a poller is
    looking at: try another name, pausing from the second miss on, within bounds."""
    cdef int fd, err, strategy, misses = 0
    cdef bytes name
    cdef const char *c_name
    cdef bint quick
    while True:
        base = fresh_name()
        name = encoded(directory, base) if dir_fd == AT_FDCWD else encoded(base)
        c_name = name
        with nogil:
            fd = openat(dir_fd, c_name, CLAIM, NAME_FILE_MODE)
            err = errno
            quick = fd >= 0 and quick_claim(fd)
        if quick:
            return fd, base
        if fd < 0:
            if err == EINTR:
                check_signals()
                continue
            if err != EEXIST and not vanished(err):
                raise retry_module().error(err, directory)
        else:
            try:
                strategy = lock_new(fd, directory, name, f"{directory}/{base}", dir_fd, False, None)
            except BaseException:
                close(fd)
                raise
            if strategy >= 0:
                return fd, base
            close(fd)
            err = ESTALE if strategy == STALE else EEXIST
        misses += 1
        retry_module().vanished(err, misses, None, directory, directory)


def claim_name(str directory):
    return claim_at(AT_FDCWD, directory)


cdef int open_directory(str directory) except -1:
    cdef bytes path = encoded(directory)
    cdef const char *c_path = path
    cdef int fd
    with nogil:
        fd = c_open(c_path, DIRECTORY)
    if fd < 0:
        raise retry_module().directory_error(errno, directory)
    return fd


def claim_member(str directory):
    cdef bytes path = encoded(directory)
    cdef const char *c_path = path
    cdef int rc, dir_fd
    with nogil:
        rc = mkdir(c_path, MEMBERS_DIRECTORY_MODE)
    if rc != 0 and errno != EEXIST:
        raise retry_module().error(errno, directory)
    dir_fd = open_directory(directory)
    try:
        return claim_at(dir_fd, directory)
    finally:
        close(dir_fd)


cdef int strategy_of_open(int fd, str directory) except -2:
    """The strategy for an open lock file (its descriptor must stay open)."""
    cdef stat info
    cdef int rc
    with nogil:
        rc = c_fstat(fd, &info)
    return strategy_of(fd, info.st_dev, directory) if rc == 0 else 0


def release(int fd, str directory, str name):
    cdef int strategy = 0
    try:
        strategy = strategy_of_open(fd, directory)
    finally:
        release_at(fd, AT_FDCWD, encoded(directory, name), None, strategy)


cdef bint quick_probe(int dir_fd, const char *name, bint remove_dead, int *state) noexcept nogil:
    """The common probe, all without the GIL: a regular file on a local filesystem
    already met, with one link.  False (having changed nothing) hands over to the general
    path, which also words the errors."""
    cdef stat info
    cdef int fd = openat(dir_fd, name, PROBE)
    cdef const char *base
    if fd < 0:
        return False
    if c_fstat(fd, &info) != 0 or not S_ISREG(info.st_mode) or known_strategy(info.st_dev) != 0:
        close(fd)
        return False
    if flock(fd, LOCK_SH | LOCK_NB) != 0:
        state[0] = ALIVE if errno == EAGAIN else -1
        close(fd)
        return state[0] == ALIVE
    base = strrchr(name, b"/")
    if not (remove_dead and info.st_size == 0 and is_name(name if base == NULL else base + 1)):
        state[0] = DEAD
    elif info.st_nlink == 1 and unlinkat(dir_fd, name, 0) == 0:
        state[0] = REMOVED
    else:
        state[0] = -1
    flock(fd, LOCK_UN)
    close(fd)
    return state[0] >= 0


cdef int probe_at(int dir_fd, bytes name, str shown, str directory, bint remove_dead) except -1:
    """What the file at name (relative to dir_fd) says of its owner: ALIVE, DEAD, REMOVED,
    DENIED or ABSENT (also for anything that is not a regular file: never ours).

    Only a shared non-blocking lock is tried, and let go at once.  With remove_dead, an
    unlocked empty file named like ours is removed, while it is still the one found."""
    cdef int fd, err = 0, strategy, rc, unlink_err, failure
    cdef stat info
    cdef Sameness sameness
    cdef const char *c_name = name
    cdef bytes base
    cdef int replaced = 0
    while True:
        with nogil:
            fd = openat(dir_fd, c_name, PROBE)
            err = errno
        if fd < 0:
            if vanished(err) or err == ELOOP or err == ENXIO:
                return ABSENT
            if err == EACCES or err == EPERM:
                return DENIED
            raise retry_module().error(err, shown)
        strategy = 0
        try:
            with nogil:
                rc = c_fstat(fd, &info)
            if rc != 0:
                raise retry_module().error(errno, shown)
            if not S_ISREG(info.st_mode):
                return ABSENT
            strategy = strategy_of(fd, info.st_dev, directory)
            try:
                if lock_fd(fd, FLOCK, False, False, None, shown) > WAITED:
                    return ALIVE
            except OSError as error:
                if error.errno == ENOENT or error.errno == ESTALE:
                    return ABSENT  # opened through a stale cache entry: the file is gone
                raise
            if strategy & RECORD_LOCK:
                with nogil:
                    rc = record_locked_elsewhere(fd)
                if rc < 0:
                    raise retry_module().error(errno, shown)
                if rc:
                    return ALIVE
            base = name.rpartition(b"/")[2]
            if not (remove_dead and info.st_size == 0 and is_name(base)):
                return DEAD
            unlink_err = 0
            with nogil:
                sameness = compare(fd, dir_fd, c_name, strategy, &err)
                if not err and sameness == SAME and unlinkat(dir_fd, c_name, 0) != 0:
                    unlink_err = errno
            if err:
                raise retry_module().error(err, shown)
            if sameness == SAME:
                if unlink_err == EPERM or unlink_err == EACCES:
                    return DEAD
                if unlink_err and not vanished(unlink_err):
                    raise retry_module().error(unlink_err, shown)
                return REMOVED
            if sameness == GONE:
                return ABSENT
        finally:
            with nogil:
                failure = let_go(fd, strategy)
            if failure:
                raise retry_module().error(failure, shown)
        # A new file took the name between our open and our check: look at that one.
        replaced += 1
        retry_module().vanished(ESTALE, replaced, None, directory, shown)


def probe(str directory, str name, bint remove_dead):
    cdef bytes path = encoded(directory, name)
    cdef const char *c_path = path
    cdef int state = ABSENT
    cdef bint quick
    with nogil:
        quick = quick_probe(AT_FDCWD, c_path, remove_dead, &state)
    if quick:
        return state
    return probe_at(AT_FDCWD, path, f"{directory}/{name}", directory, remove_dead)


cdef list scan_at(int dir_fd, str directory, bint remove_dead, bint stop_at_live):
    """Probe every entry of the open directory named like ours (dir_fd is closed)."""
    cdef DIR *listing
    cdef dirent *entry
    cdef stat info
    cdef int err, state = ABSENT, rc
    cdef bint quick
    cdef list found = []
    cdef bytes name
    listing = fdopendir(dir_fd)
    if listing == NULL:
        err = errno
        close(dir_fd)
        raise retry_module().error(err, directory)
    try:
        while True:
            with nogil:
                set_errno(0)  # readdir says "error" only through errno
                entry = readdir(listing)
                err = errno
            if entry == NULL:
                if err:
                    raise retry_module().error(err, directory)
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
                state = probe_at(dir_fd, name, f"{directory}/{text}", directory, remove_dead)
            if state != ABSENT:
                found.append((text, state))
            if stop_at_live and (state == ALIVE or state == DENIED):
                return found
    finally:
        closedir(listing)


def scan(str directory, bint remove_dead):
    return scan_at(open_directory(directory), directory, remove_dead, False)


def leave_arena(int fd, str directory, str name):
    cdef int dir_fd, strategy = 0
    try:
        dir_fd = open_directory(directory)
    except BaseException:
        close(fd)
        raise
    try:
        try:
            strategy = strategy_of_open(fd, directory)
        finally:
            release_at(fd, dir_fd, encoded(name), f"{directory}/{name}", strategy)
    except BaseException:
        close(dir_fd)
        raise
    found = scan_at(dir_fd, directory, True, True)
    last = found[len(found) - 1] if found else None
    return last if last is not None and last[1] in (ALIVE, DENIED) else None


# Small files (cgroup settings, /proc), read whole with the system calls.

def read_text(str path):
    cdef bytes name = encoded(path)
    cdef const char *c_name = name
    cdef int fd, rc = -1, err = 0
    cdef ssize_t got
    cdef char buffer[8192]
    cdef stat info
    chunks = []
    with nogil:
        fd = c_open(c_name, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        err = errno
        if fd >= 0:
            rc = c_fstat(fd, &info)
            err = errno
    if fd < 0:
        raise retry_module().error(err, path)
    try:
        # Only a regular file (as /proc, sysfs and cgroup files are): a device such as
        # /dev/zero would never end, a FIFO not say anything.
        if rc != 0:
            raise retry_module().error(err, path)
        if not S_ISREG(info.st_mode):
            raise retry_module().not_a_regular_file(path, "a file to read")
        while True:
            with nogil:
                got = read(fd, buffer, sizeof(buffer))
            if got < 0:
                if errno == EINTR:
                    check_signals()
                    continue
                raise retry_module().error(errno, path)
            if got == 0:
                break
            chunks.append(buffer[:got])
    finally:
        close(fd)
    return b"".join(chunks).decode("utf-8", "surrogateescape")
