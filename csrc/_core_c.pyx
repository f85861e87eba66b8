# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: annotation_typing=False
"""Compiled core of toil_threading: the lock primitives over raw system calls.

Twin of toil_threading/_core_py.py: same names, signatures and behaviour.  Blocking
waits run without the GIL; an interrupted wait runs the Python signal handlers and
goes on unless one of them raised (so Ctrl-C gives KeyboardInterrupt promptly).
"""

from cpython.exc cimport PyErr_CheckSignals
from libc.string cimport memchr, memcpy, strerror
from os import urandom
from sys import getfilesystemencoding, getfilesystemencodeerrors


cdef extern from "Python.h":
    bytes PyUnicode_EncodeFSDefault(object text)
    const char *PyUnicode_AsUTF8AndSize(object text, Py_ssize_t *size) except NULL
    bytes PyBytes_FromStringAndSize(const char *text, Py_ssize_t size)
    char *PyBytes_AS_STRING(object data)


cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        EINTR
        EIO
        ENOLCK
        EAGAIN
        EACCES
        ENOENT
        ENOTDIR
        ESTALE
        EEXIST
        ELOOP

cdef extern from "<fcntl.h>" nogil:
    int c_open "open"(const char *path, int flags, ...)
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
    int openat(int dirfd, const char *path, int flags, ...)
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
        unsigned long st_nlink
    int c_fstat "fstat"(int fd, stat *buf)
    int fstatat(int dirfd, const char *path, stat *buf, int flags)
    int mkdir(const char *path, unsigned int mode)

cdef extern from "compat.h" nogil:
    void clear_errno()
    struct statfs:
        long f_type
    int c_statfs "statfs"(const char *path, statfs *buf)
    int fstatfs(int fd, statfs *buf)

cdef extern from "<unistd.h>" nogil:
    int close(int fd)
    int unlink(const char *path)
    int getpid()

cdef extern from "<dirent.h>" nogil:
    ctypedef struct DIR
    struct dirent:
        char *d_name
    DIR *fdopendir(int fd)
    dirent *readdir(DIR *dir)
    int closedir(DIR *dir)
    int dirfd(DIR *dir)

cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    enum:
        CLOCK_MONOTONIC
    int clock_gettime(int clock, timespec *now)
    int nanosleep(const timespec *request, timespec *remaining)


def _log(str level, str message, *args):
    # logging is imported only when something is worth saying: it costs milliseconds.
    import logging
    getattr(logging.getLogger("toil_threading"), level)(message, *args)

# The EIO/ENOLCK retry policy; the facade sets it from the environment at import.
cdef int policy_max_tries = 10
cdef double policy_backoff = 1.0
cdef double policy_max_backoff = 60.0

# The on-disk names and filesystem numbers, shared with the pure core and the facade.
include "../toil_threading/_protocol.py"

# Ceph, where flock is known to hang or break the MDS, as a C number for the hot path.
cdef long CEPH_MAGIC = CEPH
CEPH_SUPER_MAGIC = CEPH

# Longest pause between two non-blocking tries of a lock wait that has a timeout.
cdef double POLL_CAP = 0.01

# Results of comparing a locked descriptor with what its path now names.
cdef enum Sameness:
    SAME
    GONE
    REPLACED

# What a non-blocking shared lock says of a name or member file.
cdef enum Liveness:
    ALIVE    # its owner holds it
    DEAD     # nobody held it: it has been removed
    ABSENT   # no such file (or not a regular file of ours)

# Where the file-system encoding is UTF-8 (everywhere, nearly), paths need no encoding.
cdef bint UTF8_PATHS = getfilesystemencoding() == "utf-8" and getfilesystemencodeerrors() == "surrogateescape"

cdef bytes NAME_BYTES = NAME_CHARACTERS.encode()
cdef bytes NAME_PREFIX_BYTES = NAME_PREFIX.encode()

# Names come from a xorshift64* generator seeded from os.urandom once per process (again
# after a fork, so parent and child do not draw the same names): like tempfile's names,
# unique by O_EXCL, not secret, and without a getrandom(2) call for each one.
cdef unsigned long long name_state = 0
cdef int name_pid = 0


cdef bytes fresh_name():
    global name_state, name_pid
    cdef char text[32]
    cdef Py_ssize_t prefix = len(NAME_PREFIX_BYTES), i
    cdef const char *characters = NAME_BYTES
    cdef Py_ssize_t count = len(NAME_BYTES)
    if name_pid != getpid():
        name_state = int.from_bytes(urandom(8), "little") | 1
        name_pid = getpid()
    memcpy(text, <const char *>NAME_PREFIX_BYTES, prefix)
    for i in range(NAME_LENGTH):
        name_state ^= name_state >> 12
        name_state ^= name_state << 25
        name_state ^= name_state >> 27
        text[prefix + i] = characters[((name_state * 2685821657736338717ULL) >> 33) % count]
    return PyBytes_FromStringAndSize(text, prefix + NAME_LENGTH)
# How many names claim() tries before giving up, as tempfile does (TMP_MAX).
cdef int CLAIM_TRIES = 10000


def set_retry_policy(int max_tries, double backoff, double max_backoff):
    global policy_max_tries, policy_backoff, policy_max_backoff
    policy_max_tries = max_tries
    policy_backoff = backoff
    policy_max_backoff = max_backoff


def retry_policy():
    return (policy_max_tries, policy_backoff, policy_max_backoff)


cdef double monotonic() noexcept nogil:
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return now.tv_sec + now.tv_nsec * 1e-9


cdef object readable(object path):
    return path.decode(errors="surrogateescape") if isinstance(path, bytes) else path


cdef int raise_errno(int err, object path) except -1:
    raise OSError(err, strerror(err).decode(), readable(path))


cdef bytes encode_path(object path):
    """The file-system encoding of path, refusing an embedded NUL as os.open does."""
    cdef bytes encoded = PyUnicode_EncodeFSDefault(path)
    if memchr(<const char *>encoded, 0, len(encoded)) != NULL:
        raise ValueError(f"embedded null byte in path {path!r}")
    return encoded


cdef int check_signals() except -1:
    """Run Python's signal handlers after an EINTR; raises what a handler raised."""
    if PyErr_CheckSignals() < 0:
        return -1
    return 0


cdef int pause(double seconds) except -1:
    """Sleep without the GIL; signal handlers run on interruption and may raise."""
    cdef timespec request, remaining
    cdef int rc
    if seconds <= 0:
        return 0
    request.tv_sec = <long>seconds
    request.tv_nsec = <long>((seconds - request.tv_sec) * 1e9)
    while True:
        with nogil:
            rc = nanosleep(&request, &remaining)
        if rc == 0:
            return 0
        check_signals()
        request = remaining


cdef object deadline_of(object timeout):
    return None if timeout is None else monotonic() + <double>timeout


cdef int lock_fd(int fd, bint block, bint shared, object deadline, object path) except -1:
    """flock with the EINTR, EIO/ENOLCK and timeout policy; deadline is monotonic or None."""
    cdef int op = LOCK_SH if shared else LOCK_EX
    cdef int rc, err
    cdef int failures = 0
    cdef double backoff = policy_backoff
    cdef double poll = 0.001
    cdef double wait, left = 0.0
    cdef bint timed = deadline is not None
    # A blocking wait first tries without blocking, keeping the GIL: most locks are free.
    cdef bint waiting = block and not timed
    op |= LOCK_NB
    while True:
        if op & LOCK_NB:
            rc = flock(fd, op)
        else:
            with nogil:
                rc = flock(fd, op)
        if rc == 0:
            return 0
        err = errno
        if timed:
            left = <double>deadline - monotonic()
        if err == EINTR:
            check_signals()
            continue
        if waiting and (err == EAGAIN or err == EACCES):
            op &= ~LOCK_NB  # busy: now wait in the kernel, without the GIL
            waiting = False
            continue
        if err == EAGAIN or err == EACCES:  # EWOULDBLOCK is EAGAIN here
            if not timed:
                raise_errno(err, path)
            if left <= 0:
                raise TimeoutError(f"timed out waiting for the lock on {readable(path) or f'fd {fd}'}")
            wait = poll if poll < left else left
            pause(wait)
            poll = poll * 2 if poll * 2 < POLL_CAP else POLL_CAP
            continue
        if err == EIO or err == ENOLCK:
            failures += 1
            if failures < policy_max_tries:
                _log("error",
                    "flock on %s failed with %s (try %d of %d); retrying in %g s",
                    readable(path) or f"fd {fd}", strerror(err).decode(), failures,
                    policy_max_tries, backoff)
                if timed and left < backoff:
                    pause(left)
                    raise TimeoutError(
                        f"timed out retrying the lock on {readable(path) or f'fd {fd}'} after "
                        f"{strerror(err).decode()}")
                pause(backoff)
                backoff = backoff * 2 if backoff * 2 < policy_max_backoff else policy_max_backoff
                continue
            _log("critical",
                "giving up on flock of %s after %d tries: %s. %s",
                readable(path) or f"fd {fd}", failures, strerror(err).decode(),
                "ENOLCK usually means an NFS mount without a working lock daemon (lockd)"
                if err == ENOLCK else
                "EIO from flock is typical of a Ceph MDS in trouble; Ceph is not safe for locks")
        raise_errno(err, path)


def lock(int fd, bint block, bint shared, object timeout, object path):
    lock_fd(fd, block, shared, deadline_of(timeout), path)


def unlock_and_close(int fd):
    unlock_close(fd)


cdef int unlock_close(int fd) except -1:
    """Unlock and close fd.  Closing releases the lock anyway, so an unlock that fails
    with EIO/ENOLCK (lock daemon trouble) or ESTALE (the file is gone on the server) is
    not an error; close(2) frees the descriptor whatever it returns."""
    cdef int rc, err
    rc = flock(fd, LOCK_UN)
    err = errno
    close(fd)
    if rc != 0 and err != EIO and err != ENOLCK and err != ESTALE:
        raise_errno(err, None)
    return 0


cdef bint lock_new_file(int fd, bint block, object deadline, object path) except -1:
    """Lock a file just opened or created, exclusively: True once locked.

    False when the file was closed because it is not worth waiting for: it went away
    under a shared filesystem's cache (ESTALE, ENOENT), or, without blocking, someone
    holds it (a poller looking at a new file, which it will remove).  Start again then.
    Any other failure closes the file and raises.
    """
    try:
        lock_fd(fd, block, False, deadline, path)
        return True
    except OSError as error:
        close(fd)
        if error.errno == ESTALE or error.errno == ENOENT or (not block and error.errno == EAGAIN):
            return False
        raise
    except BaseException:
        close(fd)
        raise


cdef Sameness compare_ids(
    dev_t dev, ino_t ino, int dir_fd, const char *path, bint fresh, int *err
) noexcept nogil:
    """Does path (relative to dir_fd) still name the file with this device and inode?

    Sets err when it cannot tell; a symlink now at path is another file.  With fresh
    (shared filesystems, whose caches may answer for a file already gone), the path is
    opened anew, which the server resolves, instead of trusting stat(2).
    """
    cdef stat named
    cdef int named_fd, rc
    err[0] = 0
    if fresh:
        named_fd = openat(dir_fd, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
        if named_fd < 0:
            if errno == ELOOP:
                return REPLACED
            if errno != ENOENT and errno != ESTALE:
                err[0] = errno
            return GONE
        rc = c_fstat(named_fd, &named)
        if rc != 0 and errno != ESTALE:
            err[0] = errno
        close(named_fd)
        if rc != 0:
            return GONE
    elif fstatat(dir_fd, path, &named, AT_SYMLINK_NOFOLLOW) != 0:
        if errno != ENOENT and errno != ESTALE:
            err[0] = errno
        return GONE
    return SAME if named.st_dev == dev and named.st_ino == ino else REPLACED


cdef Sameness compare(int fd, int dir_fd, const char *path, bint fresh, int *err) noexcept nogil:
    """Does path (relative to dir_fd) still name the file open at fd?"""
    cdef stat held
    err[0] = 0
    if c_fstat(fd, &held) != 0:
        if errno != ESTALE:
            err[0] = errno
        return GONE
    if fresh and held.st_nlink == 0:
        return GONE
    return compare_ids(held.st_dev, held.st_ino, dir_fd, path, fresh, err)


# Per directory: is it on a shared filesystem?  Decided once per process (a statfs).
cdef dict shared_directories = {}


cdef bint directory_exists(object directory) except -1:
    """After ENOENT creating a file in it: was it the directory, or a stale cache entry?"""
    cdef stat info
    return fstatat(AT_FDCWD, encode_path(directory), &info, 0) == 0


cdef bint on_shared_filesystem(object directory, const char *encoded) except -1:
    cdef statfs info
    found = shared_directories.get(directory)
    if found is None:
        if c_statfs(encoded, &info) != 0:
            return False  # the operation itself will meet and report the problem
        found = shared_directories[directory] = info.f_type in SHARED_FILESYSTEMS
    return found


def same_file(int fd, object path):
    cdef bytes encoded = encode_path(path)
    cdef int err
    cdef statfs info
    cdef bint fresh = fstatfs(fd, &info) == 0 and info.f_type in SHARED_FILESYSTEMS
    cdef Sameness result = compare(fd, AT_FDCWD, encoded, fresh, &err)
    if err:
        raise_errno(err, path)
    return result == SAME


def fs_type(object path):
    cdef bytes encoded = encode_path(path)
    cdef statfs info
    if c_statfs(encoded, &info) != 0:
        raise_errno(errno, path)
    return info.f_type


cdef bytes join(object base_dir, object filename):
    """base_dir + "/" + filename in the file-system encoding, made in one allocation."""
    cdef Py_ssize_t dir_size, name_size
    cdef const char *dir_text
    cdef const char *name_text
    cdef bytes joined
    cdef char *out
    if not (UTF8_PATHS and type(base_dir) is str and type(filename) is str):
        return encode_path(base_dir) + b"/" + encode_path(filename)
    try:  # str keeps its UTF-8 form cached: usually no encoding work at all
        dir_text = PyUnicode_AsUTF8AndSize(base_dir, &dir_size)
        name_text = PyUnicode_AsUTF8AndSize(filename, &name_size)
    except UnicodeEncodeError:  # lone surrogates: undecodable bytes of a path
        return encode_path(base_dir) + b"/" + encode_path(filename)
    joined = PyBytes_FromStringAndSize(NULL, dir_size + 1 + name_size)
    out = PyBytes_AS_STRING(joined)
    memcpy(out, dir_text, dir_size)
    out[dir_size] = b"/"
    memcpy(out + dir_size + 1, name_text, name_size)
    if memchr(out, 0, dir_size + 1 + name_size) != NULL:
        raise ValueError(f"embedded null byte in path {base_dir!r}/{filename!r}")
    return joined


cdef str shown(object base_dir, object filename):
    return filename if base_dir is None else f"{base_dir}/{filename}"


cdef class HeldMutex:
    """What global_mutex returns: a context manager holding the mutex file while entered.

    refusal(base_dir) makes the exception raised when base_dir is on a filesystem
    where locks are unsafe (checked on every acquisition, as Toil does).
    """
    cdef readonly object base_dir, filename
    cdef object timeout, refusal
    cdef bytes path
    cdef int fd
    cdef dev_t dev
    cdef ino_t ino
    cdef bint fresh

    def __init__(self, object base_dir, object filename, object timeout, object refusal):
        self.base_dir, self.filename = base_dir, filename
        self.timeout, self.refusal = timeout, refusal
        self.path = join(base_dir, filename)
        self.fd = -1

    cdef str shown(self):
        return shown(self.base_dir, self.filename)

    cdef int acquire(self, object deadline) except -1:
        """Open, lock and verify the mutex file; fills in the descriptor and identity.

        The filesystem is checked on the open file, before any lock is taken: one
        system call fewer than checking the directory first.  On a refused filesystem
        an empty mutex file may be left behind; no lock is ever taken there.
        """
        cdef const char *path = self.path
        cdef int fd, err
        cdef stat info
        cdef statfs filesystem
        cdef Sameness sameness
        cdef bint checked = False
        while True:
            fd = c_open(path, O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0o666)
            if fd < 0:
                err = errno
                if err == EINTR:
                    check_signals()
                    continue
                if err == ESTALE or err == EEXIST or (err == ENOENT and directory_exists(self.base_dir)):
                    # Another client changed the directory under our cache (a shared
                    # filesystem can even answer EEXIST to an open without O_EXCL).
                    continue
                raise_errno(err, self.base_dir if err == ENOENT or err == ENOTDIR else self.shown())
            if not checked:
                # The filesystem is checked once per acquisition, on its first open;
                # the retries of a contended wait open files in the same directory.
                if fstatfs(fd, &filesystem) != 0:
                    err = errno
                    close(fd)
                    if err == ESTALE or err == ENOENT:
                        continue
                    raise_errno(err, self.shown())
                if filesystem.f_type == CEPH_MAGIC:
                    close(fd)
                    raise self.refusal(self.base_dir)
                self.fresh = filesystem.f_type in SHARED_FILESYSTEMS
                checked = True
            if not lock_new_file(fd, True, deadline, self.path):
                continue
            err = 0
            if c_fstat(fd, &info) != 0:
                err = errno
                sameness = GONE
            elif self.fresh and info.st_nlink == 0:
                sameness = GONE
            else:
                sameness = compare_ids(info.st_dev, info.st_ino, AT_FDCWD, path, self.fresh, &err)
            if sameness == SAME:
                self.fd, self.dev, self.ino = fd, info.st_dev, info.st_ino
                return 0
            # The previous holder unlinked (or someone replaced) the file while we waited.
            close(fd)
            if err and err != ESTALE:
                raise_errno(err, self.shown())

    def __enter__(self):
        if self.fd >= 0:
            raise RuntimeError("this global_mutex() is already entered; call global_mutex() again")
        self.acquire(deadline_of(self.timeout))

    def __exit__(self, exc_type, exc, traceback):
        cdef int fd = self.fd
        cdef int err = 0, unlink_err = 0
        cdef Sameness sameness
        if fd < 0:
            raise RuntimeError("this global_mutex() was not entered")
        self.fd = -1
        sameness = compare_ids(self.dev, self.ino, AT_FDCWD, self.path, self.fresh, &err)
        if sameness == SAME and unlink(self.path) != 0:
            unlink_err = errno
            if unlink_err == ENOENT or unlink_err == ESTALE:
                sameness, unlink_err = GONE, 0
        if sameness != SAME and not err:
            log_lost_lock_file(self.shown(), sameness)
        unlock_close(fd)
        if err or unlink_err:
            raise_errno(err or unlink_err, self.shown())


cdef log_lost_lock_file(str path, Sameness sameness):
    _log("error",
        "lock file %s was %s while its lock was held (by pid %d): "
        "something outside the locking protocol touched it",
        path, "removed" if sameness == GONE else "replaced", getpid())


def release(int fd, object base_dir, object filename):
    """Unlink the lock file if it is still ours, then unlock and close."""
    cdef bytes encoded = join(base_dir, filename)
    cdef int err = 0, unlink_err = 0
    cdef bint fresh = on_shared_filesystem(base_dir, encode_path(base_dir))
    cdef Sameness sameness = compare(fd, AT_FDCWD, encoded, fresh, &err)
    if sameness == SAME and unlink(encoded) != 0:
        unlink_err = errno
        if unlink_err == ENOENT or unlink_err == ESTALE:
            sameness, unlink_err = GONE, 0
    if sameness != SAME and not err:
        log_lost_lock_file(shown(base_dir, filename), sameness)
    unlock_close(fd)
    if err or unlink_err:
        raise_errno(err or unlink_err, shown(base_dir, filename))


cdef Liveness probe(
    int dir_fd, bytes name, object directory, bint remove_dead, bint fresh
) except *:
    """Is the file at name (relative to dir_fd) held by a live owner?

    Only a shared non-blocking lock is tried, and let go at once.  If remove_dead, a
    file nobody holds belongs to a dead owner and is removed, but only while it is
    still the file at that path.  directory only names the file in errors.
    """
    cdef int fd, err
    cdef Sameness sameness
    while True:
        fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
        if fd < 0:
            err = errno
            if err == EINTR:
                check_signals()
                continue
            if err == ENOENT or err == ESTALE or err == ELOOP:
                return ABSENT
            raise_errno(err, shown(directory, readable(name)))
        if flock(fd, LOCK_SH | LOCK_NB) != 0:
            err = errno
            if err == EAGAIN:
                close(fd)
                return ALIVE
            if err == ESTALE or err == ENOENT:
                close(fd)  # opened through a stale cache entry: the file is gone
                return ABSENT
            try:  # not a plain "busy": the full policy (EINTR, EIO/ENOLCK retries)
                lock_fd(fd, False, True, None, name)
            except BlockingIOError:
                close(fd)
                return ALIVE
            except BaseException:
                close(fd)
                raise
        if not remove_dead:
            unlock_close(fd)
            return DEAD
        sameness = compare(fd, dir_fd, name, fresh, &err)
        if sameness == SAME and unlinkat(dir_fd, name, 0) != 0:
            if errno != ENOENT and errno != ESTALE:
                err = errno
        unlock_close(fd)
        if err:
            raise_errno(err, shown(directory, readable(name)))
        if sameness != REPLACED:
            return DEAD if sameness == SAME else ABSENT
        # A new file took the name between our open and our check: look at that one.


def held(object directory, object name, bint remove_dead):
    """True if the file name in directory is locked, False if not, None if absent.

    With remove_dead, a file found unlocked is removed (if still the one found).
    """
    cdef bint fresh = on_shared_filesystem(directory, encode_path(directory))
    cdef Liveness liveness = probe(AT_FDCWD, join(directory, name), None, remove_dead, fresh)
    return None if liveness == ABSENT else liveness == ALIVE


def claim(object directory, bint make_directory):
    """Create and exclusively lock a fresh mkstemp-style file in directory.

    Returns (descriptor, file name).  The file is verified to be still at its path once
    locked: a poller may take a dead-looking new file for a dead one and remove it.
    """
    cdef bytes encoded_dir = encode_path(directory)
    cdef bytes name, path
    cdef int fd, err, attempt
    cdef Sameness sameness
    if make_directory and mkdir(encoded_dir, 0o777) != 0 and errno != EEXIST:
        raise_errno(errno, directory)
    cdef bint fresh = on_shared_filesystem(directory, encoded_dir)
    for attempt in range(CLAIM_TRIES):
        name = fresh_name()
        path = encoded_dir + b"/" + name
        fd = c_open(path, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0o600)
        if fd < 0:
            err = errno
            if err == EINTR:
                check_signals()
            elif err != EEXIST and err != ESTALE and not (err == ENOENT and directory_exists(directory)):
                raise_errno(err, directory)
            continue
        if not lock_new_file(fd, False, None, path):
            continue
        sameness = compare(fd, AT_FDCWD, path, fresh, &err)
        if sameness == SAME:
            return fd, name.decode()
        close(fd)
        if err:
            raise_errno(err, directory)
    raise FileExistsError(EEXIST, f"no free name for a new file after {CLAIM_TRIES} tries", directory)


def arena_scan(object directory):
    """Remove dead members of an arena; True if no live member is left.

    Stops at the first live member.  A missing directory has no members.
    """
    cdef bytes encoded = encode_path(directory)
    cdef int dir_fd
    cdef DIR *listing
    cdef dirent *entry
    cdef bytes name
    cdef bint fresh = on_shared_filesystem(directory, encoded)
    dir_fd = c_open(encoded, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if dir_fd < 0:
        if errno == ENOENT:
            return True
        raise_errno(errno, directory)
    listing = fdopendir(dir_fd)
    if listing == NULL:
        close(dir_fd)
        raise_errno(errno, directory)
    try:
        while True:
            clear_errno()  # readdir says "error" only through errno
            entry = readdir(listing)
            if entry == NULL:
                if errno:
                    raise_errno(errno, directory)
                return True
            if entry.d_name[0] == b'.':
                continue
            name = entry.d_name
            if probe(dir_fd, name, directory, True, fresh) == ALIVE:
                return False
    finally:
        closedir(listing)


# The cgroup and affinity walk: the pure core imports the same source.
include "../toil_threading/_cgroups.py"
