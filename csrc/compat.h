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

/* O_PATH (open a directory only to work relative to it) is Linux's; elsewhere a directory
   is opened for reading. */
#ifndef O_PATH
#define O_PATH O_RDONLY
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

/* How to lock on each filesystem met (its device), kept for the process.  Slots are
   written with the GIL held (one writer at a time) and read without it, on the common
   paths, so each is published under a sequence count (a seqlock): a reader that finds the
   count odd, or changed while it read, treats the slot as unknown and takes the slow path,
   which asks again with the GIL.  A device is never paired with another's locking. */
#define LOCK_FLAGS_SLOTS 64
static struct lock_flags_slot {
    unsigned long sequence;
    unsigned long long device;
    int locking;
} lock_flags_slots[LOCK_FLAGS_SLOTS];
static int lock_flags_slots_used, lock_flags_slot_next;

static inline int known_lock_flags(unsigned long long device) {
    int used = __atomic_load_n(&lock_flags_slots_used, __ATOMIC_ACQUIRE);
    for (int i = 0; i < used; i++) {
        struct lock_flags_slot *slot = &lock_flags_slots[i];
        unsigned long before = __atomic_load_n(&slot->sequence, __ATOMIC_ACQUIRE);
        unsigned long long found = __atomic_load_n(&slot->device, __ATOMIC_RELAXED);
        int locking = __atomic_load_n(&slot->locking, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (before & 1 || __atomic_load_n(&slot->sequence, __ATOMIC_RELAXED) != before)
            continue;
        if (found == device)
            return locking;
    }
    return -1;
}

/* With the GIL held; kept is how many slots to use (the protocol's count, at most
   LOCK_FLAGS_SLOTS). */
static inline void keep_lock_flags(unsigned long long device, int locking, int kept) {
    struct lock_flags_slot *slot = &lock_flags_slots[lock_flags_slot_next];
    unsigned long sequence = slot->sequence;
    __atomic_store_n(&slot->sequence, sequence + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&slot->device, device, __ATOMIC_RELAXED);
    __atomic_store_n(&slot->locking, locking, __ATOMIC_RELAXED);
    __atomic_store_n(&slot->sequence, sequence + 2, __ATOMIC_RELEASE);
    lock_flags_slot_next = (lock_flags_slot_next + 1) % kept;
    if (lock_flags_slots_used < kept)
        __atomic_store_n(&lock_flags_slots_used, lock_flags_slots_used + 1, __ATOMIC_RELEASE);
}

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
