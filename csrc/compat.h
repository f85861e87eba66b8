/* Small portability helpers for the compiled core. */
#ifndef TOIL_THREADING_COMPAT_H
#define TOIL_THREADING_COMPAT_H
/* statfs(2) is declared in different headers on Linux and on the BSDs (macOS). */
#if defined(__linux__)
#include <sys/vfs.h>
#else
#include <sys/param.h>
#include <sys/mount.h>
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

/* Open-file-description record locks are Linux's; elsewhere the package never asks for
   one, and these make any call fail with EINVAL. */
#ifndef F_OFD_SETLK
#define F_OFD_GETLK (-1)
#define F_OFD_SETLK (-1)
#define F_OFD_SETLKW (-1)
#endif

/* errno is a macro in C: Cython assigns it through this. */
static inline void set_errno(int value) { errno = value; }

/* Forks this process came through (forks_seen, counted in each child): a lock entered
   before the fork that made this process belongs to its parent, which this process must
   never release.  Forks this process made (forks_made, counted before each): a lock
   entered before one may be shared with a child, so closing our descriptor would not
   release it; with none, it is ours alone. */
static unsigned long forks_seen, forks_made;
static void count_fork_seen(void) { forks_seen++; }
static void count_fork_made(void) { forks_made++; }
static inline int count_forks(void) {
    return pthread_atfork(count_fork_made, NULL, count_fork_seen);
}
static inline unsigned long forks(void) { return forks_seen; }
static inline unsigned long forks_of_ours(void) { return forks_made; }

/* A whole-file record lock request of the given type (F_RDLCK, F_WRLCK, F_UNLCK). */
static inline int record_lock(int fd, int command, short type) {
    struct flock lock = {0};
    lock.l_type = type;
    lock.l_whence = SEEK_SET;
    return fcntl(fd, command, &lock);
}

/* A process about to wait for a mutex on a local filesystem says so: a read lock on the
   file's first byte, then a size of at least 1 so that a holder knows to look for such
   locks.  A holder that finds one keeps the file at release instead of unlinking it from
   under its waiters.  Best effort: -1 where it could not (a read-only file). */
static inline int announce_waiting(int fd) {
    struct flock lock = {0};
    lock.l_type = F_RDLCK;
    lock.l_whence = SEEK_SET;
    lock.l_len = 1;
    if (fcntl(fd, F_OFD_SETLK, &lock) != 0)
        return -1;
    return ftruncate(fd, 1);
}

/* Whether another open file description announced it waits on fd's file (see above). */
static inline int waiters_announced(int fd) {
    struct flock lock = {0};
    lock.l_type = F_WRLCK;
    lock.l_whence = SEEK_SET;
    lock.l_len = 1;
    return fcntl(fd, F_OFD_GETLK, &lock) == 0 && lock.l_type != F_UNLCK;
}

/* Whether another open file description holds a record lock conflicting with a read
   lock on fd's file: 1 if so, 0 if not, -1 with errno on failure. */
static inline int record_locked_elsewhere(int fd) {
    struct flock lock = {0};
    lock.l_type = F_RDLCK;
    lock.l_whence = SEEK_SET;
    if (fcntl(fd, F_OFD_GETLK, &lock) != 0)
        return -1;
    return lock.l_type != F_UNLCK;
}
#endif
