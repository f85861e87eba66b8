/*
 * LD_PRELOAD shim that makes flock(2) fail on chosen files, to test the
 * EIO/ENOLCK/EINTR handling of toil_threading's cores against real processes.
 *
 *   FAULT_FLOCK_PATH   substring of the /proc/self/fd/N target of affected files
 *   FAULT_FLOCK_ERRNO  errno to inject (e.g. 5 EIO, 37 ENOLCK, 4 EINTR, 12 ENOMEM)
 *   FAULT_FLOCK_TIMES  lock requests that fail before the real flock runs; -1: all
 *   FAULT_FLOCK_UNLOCK if set, unlocks (LOCK_UN) fail too; otherwise they always go through
 *   FAULT_FS_TYPE      if set, statfs/fstatfs of affected files report this f_type
 *                      (e.g. 0xc36400, Ceph), to test refusals without that filesystem
 *
 * Build: cc -shared -fPIC -O2 -o libfaultinject.so faultinject.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/vfs.h>
#include <unistd.h>

typedef int (*flock_fn)(int, int);

/* Failures handed out so far; atomic so that threads locking at once share one budget. */
static atomic_long injected;

static flock_fn real_flock(void)
{
    /* Racing threads may both look it up; they store the same pointer. */
    static _Atomic(flock_fn) real;
    flock_fn fn = atomic_load(&real);
    if (!fn) {
        fn = (flock_fn)dlsym(RTLD_NEXT, "flock");
        atomic_store(&real, fn);
    }
    return fn;
}

/* Only files named by the marker are touched, so the interpreter's own start is not. */
static int targeted(int fd, const char *marker)
{
    char link[64], target[4096];
    ssize_t n;
    int saved = errno;

    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    n = readlink(link, target, sizeof target - 1);
    errno = saved;  /* a failed readlink must not leak its errno to the caller */
    if (n < 0)
        return 0;
    target[n] = '\0';
    return strstr(target, marker) != NULL;
}

int flock(int fd, int op)
{
    const char *marker = getenv("FAULT_FLOCK_PATH");
    const char *code = getenv("FAULT_FLOCK_ERRNO");
    const char *times_text = getenv("FAULT_FLOCK_TIMES");
    flock_fn real = real_flock();

    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    /* Unlocks go through unless asked: a test must be able to release what it got. */
    int unlock_faults = getenv("FAULT_FLOCK_UNLOCK") != NULL;
    if (((op & LOCK_UN) && !unlock_faults) || !marker || !*marker || !code ||
        !targeted(fd, marker))
        return real(fd, op);

    long times = times_text ? strtol(times_text, NULL, 10) : -1;
    if (times < 0 || atomic_fetch_add(&injected, 1) < times) {
        errno = atoi(code);
        return -1;
    }
    return real(fd, op);
}

typedef int (*statfs_fn)(const char *, struct statfs *);
typedef int (*fstatfs_fn)(int, struct statfs *);

/* The real call's answer, with f_type replaced when the target is marked. */
static int faked_type(int rc, int marked, struct statfs *buf)
{
    const char *type = getenv("FAULT_FS_TYPE");
    if (rc == 0 && marked && type && *type)
        buf->f_type = strtol(type, NULL, 0);
    return rc;
}

/* Programs built with 64-bit file offsets call the *64 names on glibc; the shim answers
 * both.  musl has no separate *64 functions. */
static int fake_statfs(const char *name, const char *path, struct statfs *buf)
{
    statfs_fn real = (statfs_fn)dlsym(RTLD_NEXT, name);
    const char *marker = getenv("FAULT_FLOCK_PATH");
    return faked_type(real(path, buf), marker && *marker && strstr(path, marker), buf);
}

static int fake_fstatfs(const char *name, int fd, struct statfs *buf)
{
    fstatfs_fn real = (fstatfs_fn)dlsym(RTLD_NEXT, name);
    const char *marker = getenv("FAULT_FLOCK_PATH");
    return faked_type(real(fd, buf), marker && *marker && targeted(fd, marker), buf);
}

int statfs(const char *path, struct statfs *buf) { return fake_statfs("statfs", path, buf); }
int fstatfs(int fd, struct statfs *buf) { return fake_fstatfs("fstatfs", fd, buf); }
#ifdef __GLIBC__
int statfs64(const char *path, struct statfs64 *buf)
{
    /* f_type leads both structures, which is all the shim touches. */
    return fake_statfs("statfs64", path, (struct statfs *)buf);
}
int fstatfs64(int fd, struct statfs64 *buf)
{
    return fake_fstatfs("fstatfs64", fd, (struct statfs *)buf);
}
#endif
