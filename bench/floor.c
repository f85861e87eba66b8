/*
 * The system-call floor of toil_threading's operations: the same system calls on the
 * same files, from C, with nothing else around them.
 *
 *   floor VARIANT DIR mutex ITERATIONS REPEATS
 *   floor VARIANT DIR contend PROCESSES MILLISECONDS REPEATS
 *   floor VARIANT DIR contend-work PROCESSES MILLISECONDS REPEATS
 *   floor VARIANT DIR contend-arena PROCESSES MILLISECONDS REPEATS
 *   floor VARIANT DIR arena ITERATIONS REPEATS
 *   floor VARIANT DIR arena-cleanup MEMBERS REPEATS
 *   floor VARIANT DIR name-live ITERATIONS REPEATS
 *   floor VARIANT DIR name-dead ITERATIONS REPEATS
 *   floor VARIANT DIR cpu-walk ITERATIONS REPEATS    (the steps in $FLOOR_WALK)
 *
 * VARIANT says how the mutex is taken and let go, and how files are named:
 *
 *   naive     Toil's protocol with full paths: statfs(DIR); open(O_CREAT), flock(LOCK_EX),
 *             fstat + lstat (is the locked file still the one at the path?); at release
 *             fstat + lstat, unlink, flock(LOCK_UN), close.
 *   dirrel    the same calls relative to DIR, opened once (O_PATH): fstatfs, openat,
 *             fstatat, mkdirat, unlinkat.
 *   fewest    the same protocol in the fewest calls, with full paths: open(O_CREAT),
 *             flock(LOCK_EX), fstat (one link: still at its path); at release fstat,
 *             unlink, flock(LOCK_UN), close.
 *   keep      a mutex that keeps its file: open(O_CREAT), flock(LOCK_EX); flock(LOCK_UN),
 *             close.  No unlink, so no same-file check: the limit of a flock mutex.
 *   announce  the package's protocol on a local filesystem, with full paths:
 *             open(O_CREAT), fstat, flock(LOCK_EX|LOCK_NB); if busy, announce the wait (a
 *             read lock F_OFD_SETLK on byte 0, then ftruncate to 1 byte) and flock(LOCK_EX);
 *             fstat (one link).  At release fstat; F_OFD_GETLK on byte 0 if the file has a
 *             byte (did anyone announce?); unlink unless so; close (which lets the
 *             lock go: no other process shares the descriptor).
 *
 * fewest, keep and announce run the mutex operations only (mutex, contend, contend-work);
 * the arena and name operations exist in the naive and dirrel variants.
 *
 * Prints one JSON line.  For mutex, arena, arena-cleanup, name-live and name-dead:
 * "samples", nanoseconds per operation for each repeat.  For contend (PROCESSES forked
 * processes taking and releasing one mutex), contend-work (the same, each opening
 * DATA_FILE, writing 8 bytes at its start and closing it while it holds the mutex) and
 * contend-arena (each entering and leaving one arena): "runs", one per repeat, each with
 * "per_second" (acquisitions, or enter + leave pairs, per second by all processes),
 * "acquisitions" (per process), "longest_wait_ns" and "wait_histogram": [bucket, count]
 * pairs of how long each acquisition (each enter) took, in WAIT_BUCKETS log-linear
 * buckets (see wait_bucket; bench/workloads.py bins the same way and reads the
 * percentiles from them).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MUTEX_FILE "toil-mutex-bench"
#define ARENA_MUTEX_FILE "toil-mutex-bench-arena-lock"
#define MEMBERS "bench-arena-members"
#define DATA_FILE "bench-data"
#define MAX_SAMPLES 1000

/* Toil's open flags for the mutex file (naive, dirrel), and the package's (the others):
   read and write so that a waiter can take a read lock, non-blocking so that a FIFO put
   at the path cannot hang the open. */
#define TOIL_MUTEX_FLAGS (O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW)
#define PACKAGE_MUTEX_FLAGS (O_CREAT | O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)

/* The package's policy for a file that vanished under us (toil_threading._protocol):
   tries in a row, the first pause (from the second try on, doubled after each) and the
   longest pause. */
#define VANISHED_TRIES 200
#define POLL_FIRST_NS 1000000LL
#define VANISHED_PAUSE_CAP_NS 50000000LL

/* Wait times are binned sixteen buckets to a power of two (about 6% wide) from 32 ns up,
   one nanosecond each below; waits of 2^36 ns (69 s) or more share the last bucket. */
#define WAIT_LONGEST ((INT64_C(1) << 36) - 1)
#define WAIT_BUCKETS 528

/* Where files are named from: a full path prefix, or a directory descriptor. */
struct place {
    const char *path;
    int fd; /* -1 where files are named by full paths */
};

/* How a variant takes and lets go of a mutex file. */
struct mutex_protocol {
    const char *variant;
    int (*acquire)(const struct place *, const char *name);
    void (*release)(const struct place *, int fd, const char *name);
    bool mutex_only; /* runs only the mutex operations (mutex, contend) */
};

/* The variant's protocol, chosen once in main; the arena's mutex is taken through it. */
static const struct mutex_protocol *mutex;

/* Whether a contending process works while it holds the mutex (contend-work); set in main. */
static bool work_in_mutex;

static void die(const char *what, const char *name) {
    fprintf(stderr, "floor: %s %s: %s\n", what, name ? name : "", strerror(errno));
    exit(1);
}

static int64_t now_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

static void pause_ns(int64_t ns) {
    struct timespec pause = {ns / 1000000000, ns % 1000000000};
    while (nanosleep(&pause, &pause) != 0 && errno == EINTR)
        continue;
}

/* The full path of name under place (naming by full paths only). */
static const char *full(const struct place *p, const char *name, char *buffer) {
    if (snprintf(buffer, PATH_MAX, "%s/%s", p->path, name) >= PATH_MAX) {
        errno = ENAMETOOLONG;
        die("path", name);
    }
    return buffer;
}

static int open_in(const struct place *p, const char *name, int flags, mode_t mode) {
    char buffer[PATH_MAX];
    return p->fd >= 0 ? openat(p->fd, name, flags, mode) : open(full(p, name, buffer), flags, mode);
}

static int stat_in(const struct place *p, const char *name, struct stat *st) {
    char buffer[PATH_MAX];
    return p->fd >= 0 ? fstatat(p->fd, name, st, AT_SYMLINK_NOFOLLOW)
                      : lstat(full(p, name, buffer), st);
}

static int unlink_in(const struct place *p, const char *name) {
    char buffer[PATH_MAX];
    return p->fd >= 0 ? unlinkat(p->fd, name, 0) : unlink(full(p, name, buffer));
}

static int mkdir_in(const struct place *p, const char *name) {
    char buffer[PATH_MAX];
    return p->fd >= 0 ? mkdirat(p->fd, name, 0777) : mkdir(full(p, name, buffer), 0777);
}

static int rmdir_in(const struct place *p, const char *name) {
    char buffer[PATH_MAX];
    return p->fd >= 0 ? unlinkat(p->fd, name, AT_REMOVEDIR) : rmdir(full(p, name, buffer));
}

static bool vanished(int err) {
    return err == ENOENT || err == ESTALE;
}

/* Is the directory that holds name (under p) still there? */
static bool directory_remains(const struct place *p, const char *name) {
    const char *slash = strrchr(name, '/');
    struct stat info;
    int rc;
    if (slash == NULL) {
        rc = p->fd >= 0 ? fstat(p->fd, &info) : stat(p->path, &info);
    } else {
        char directory[PATH_MAX];
        snprintf(directory, sizeof directory, "%.*s", (int)(slash - name), name);
        rc = stat_in(p, directory, &info);
    }
    return rc == 0 && info.st_nlink > 0;
}

/*
 * Name went away (or clashed) under us for the tries-th time in a row: what the package's
 * cores do then (toil_threading._retry.vanished).  Opening a mutex file with O_CREAT
 * fails with ENOENT when the previous holder unlinks it between the lookup and the
 * open: a race, tried again at once, then with growing pauses.  An ENOENT whose directory
 * is gone is no race; running out of tries ends the run too.
 */
static void after_vanished(const struct place *p, int err, int tries, const char *name) {
    if (err == ENOENT && !directory_remains(p, name)) {
        errno = err;
        die("directory gone under", name);
    }
    if (tries >= VANISHED_TRIES) {
        errno = err;
        die("still vanishing after retries:", name);
    }
    if (tries > 1) {
        int shift = tries - 2 < 16 ? tries - 2 : 16;
        int64_t pause = POLL_FIRST_NS << shift;
        pause_ns(pause < VANISHED_PAUSE_CAP_NS ? pause : VANISHED_PAUSE_CAP_NS);
    }
}

/* Open (creating it) a mutex file, retrying the race with its previous holder's unlink. */
static int open_mutex_file(const struct place *p, const char *name, int flags) {
    for (int tries = 1;; tries++) {
        int fd = open_in(p, name, flags, 0666);
        if (fd >= 0)
            return fd;
        if (!vanished(errno))
            die("open", name);
        after_vanished(p, errno, tries, name);
    }
}

/* The filesystem check made before every mutex acquisition (refusing Ceph). */
static void check_filesystem(const struct place *p) {
    struct statfs info;
    if ((p->fd >= 0 ? fstatfs(p->fd, &info) : statfs(p->path, &info)) != 0)
        die("statfs", p->path);
}

/* Is the file open at fd still the one at name?  Both stat(2)ed (Toil's check). */
static bool same_file(const struct place *p, int fd, const char *name) {
    struct stat held, named;
    if (fstat(fd, &held) != 0)
        die("fstat", name);
    if (stat_in(p, name, &named) != 0) {
        if (vanished(errno))
            return false;
        die("stat", name);
    }
    return held.st_dev == named.st_dev && held.st_ino == named.st_ino;
}

/* Is the file open at fd still at its path?  One link says so: only a holder unlinks. */
static bool still_linked(int fd, const char *name, struct stat *held) {
    if (fstat(fd, held) != 0)
        die("fstat", name);
    return held->st_nlink == 1;
}

static void lock_exclusive(int fd, const char *name) {
    if (flock(fd, LOCK_EX) != 0)
        die("flock", name);
}

/* Unlink (if still ours), unlock and close: Toil's release of a mutex or a member. */
static void release(const struct place *p, int fd, const char *name) {
    if (same_file(p, fd, name) && unlink_in(p, name) != 0 && !vanished(errno))
        die("unlink", name);
    flock(fd, LOCK_UN);
    close(fd);
}

static int toil_acquire(const struct place *p, const char *name) {
    check_filesystem(p);
    for (;;) {
        int fd = open_mutex_file(p, name, TOIL_MUTEX_FLAGS);
        lock_exclusive(fd, name);
        if (same_file(p, fd, name))
            return fd;
        close(fd); /* the previous holder unlinked it while we waited */
    }
}

static int fewest_acquire(const struct place *p, const char *name) {
    struct stat held;
    for (;;) {
        int fd = open_mutex_file(p, name, PACKAGE_MUTEX_FLAGS);
        lock_exclusive(fd, name);
        if (still_linked(fd, name, &held))
            return fd;
        close(fd);
    }
}

static void fewest_release(const struct place *p, int fd, const char *name) {
    struct stat held;
    if (still_linked(fd, name, &held) && unlink_in(p, name) != 0 && !vanished(errno))
        die("unlink", name);
    flock(fd, LOCK_UN);
    close(fd);
}

static int keep_acquire(const struct place *p, const char *name) {
    int fd = open_mutex_file(p, name, PACKAGE_MUTEX_FLAGS);
    lock_exclusive(fd, name);
    return fd;
}

static void keep_release(const struct place *p, int fd, const char *name) {
    (void)p, (void)name;
    flock(fd, LOCK_UN);
    close(fd);
}

/* A record lock request on the file's first byte. */
static struct flock first_byte(short type) {
    struct flock lock = {0};
    lock.l_type = type;
    lock.l_whence = SEEK_SET;
    lock.l_len = 1;
    return lock;
}

static int announce_acquire(const struct place *p, const char *name) {
    struct stat held;
    for (;;) {
        int fd = open_mutex_file(p, name, PACKAGE_MUTEX_FLAGS);
        /* The package's check that it is a regular file, and of its filesystem (its
           device's strategy, known after the first time). */
        if (fstat(fd, &held) != 0 || !S_ISREG(held.st_mode))
            die("fstat (not a regular file?)", name);
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            if (errno != EWOULDBLOCK)
                die("flock", name);
            /* Busy: say that we wait, so that the holder keeps the file for us. */
            struct flock waiting = first_byte(F_RDLCK);
            if (fcntl(fd, F_OFD_SETLK, &waiting) != 0 || ftruncate(fd, 1) != 0)
                die("announce", name);
            lock_exclusive(fd, name);
        }
        if (still_linked(fd, name, &held))
            return fd;
        close(fd);
    }
}

static void announce_release(const struct place *p, int fd, const char *name) {
    struct stat held;
    if (still_linked(fd, name, &held)) {
        bool waited_for = false;
        if (held.st_size > 0) {
            struct flock announced = first_byte(F_WRLCK);
            if (fcntl(fd, F_OFD_GETLK, &announced) != 0)
                die("fcntl F_OFD_GETLK", name);
            waited_for = announced.l_type != F_UNLCK;
        }
        if (!waited_for && unlink_in(p, name) != 0 && !vanished(errno))
            die("unlink", name);
    }
    /* No LOCK_UN: no other process shares this descriptor (none forked while it was
       open), so closing it lets the lock go, as in the package. */
    close(fd);
}

static const struct mutex_protocol PROTOCOLS[] = {
    {"naive", toil_acquire, release, false},
    {"dirrel", toil_acquire, release, false},
    {"fewest", fewest_acquire, fewest_release, true},
    {"keep", keep_acquire, keep_release, true},
    {"announce", announce_acquire, announce_release, true},
};

/* Names like tempfile.mkstemp's, from a userspace generator (no system call). */
static uint64_t name_state;

/* Seed the generator: once per process (a forked child reseeds, not to draw its
   parent's names). */
static void seed_names(void) {
    name_state = ((uint64_t)now_ns() ^ ((uint64_t)getpid() << 32)) | 1;
}

static void fresh_name(char *buffer, size_t size, const char *prefix) {
    static const char letters[] = "abcdefghijklmnopqrstuvwxyz0123456789_";
    char random[9];
    if (name_state == 0)
        seed_names();
    for (int i = 0; i < 8; i++) {
        name_state ^= name_state << 13, name_state ^= name_state >> 7, name_state ^= name_state << 17;
        random[i] = letters[name_state % 37];
    }
    random[8] = '\0';
    snprintf(buffer, size, "%stmp%s", prefix, random);
}

/* Create and lock a fresh name or member file; returns its descriptor.  A name taken
   already, or one that vanished, is followed by another, as the cores do. */
static int claim(const struct place *p, const char *prefix, char *name, size_t size) {
    for (int misses = 1;; misses++) {
        fresh_name(name, size, prefix);
        int fd = open_in(p, name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0) {
            if (errno != EEXIST && !vanished(errno))
                die("open", name);
            after_vanished(p, errno, misses, name);
            continue;
        }
        if (flock(fd, LOCK_EX | LOCK_NB) != 0)
            die("flock", name);
        if (same_file(p, fd, name))
            return fd;
        close(fd);
        after_vanished(p, ESTALE, misses, name);
    }
}

/* Is the name or member file held by a live owner?  A dead one's file is removed. */
static bool probe(const struct place *p, const char *name) {
    int fd = open_in(p, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0);
    if (fd < 0) {
        if (vanished(errno))
            return false;
        die("open", name);
    }
    if (flock(fd, LOCK_SH | LOCK_NB) != 0) {
        if (errno != EWOULDBLOCK)
            die("flock", name);
        close(fd);
        return true;
    }
    release(p, fd, name);
    return false;
}

/* Remove the dead members; true if no live one is left (stops at the first). */
static bool scan_members(const struct place *base) {
    char path[PATH_MAX] = "";
    DIR *listing;
    if (base->fd >= 0) {
        int fd = openat(base->fd, MEMBERS, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        listing = fd < 0 ? NULL : fdopendir(fd);
    } else {
        listing = opendir(full(base, MEMBERS, path));
    }
    if (listing == NULL)
        die("opendir", MEMBERS);
    struct place members = {path, base->fd >= 0 ? dirfd(listing) : -1};
    bool alone = true;
    struct dirent *entry;
    while (alone && (entry = readdir(listing)) != NULL)
        if (entry->d_name[0] != '.' && probe(&members, entry->d_name))
            alone = false;
    closedir(listing);
    return alone;
}

static int arena_enter(const struct place *p, char *member, size_t size) {
    int held = mutex->acquire(p, ARENA_MUTEX_FILE);
    if (mkdir_in(p, MEMBERS) != 0 && errno != EEXIST)
        die("mkdir", MEMBERS);
    int fd = claim(p, MEMBERS "/", member, size);
    mutex->release(p, held, ARENA_MUTEX_FILE);
    return fd;
}

static void arena_leave(const struct place *p, int fd, const char *member) {
    int held = mutex->acquire(p, ARENA_MUTEX_FILE);
    release(p, fd, member);
    if (scan_members(p) && rmdir_in(p, MEMBERS) != 0)
        die("rmdir", MEMBERS);
    mutex->release(p, held, ARENA_MUTEX_FILE);
}

/* An unlocked file named like a member or a name (into name): what a dead process leaves. */
static void make_dead_file(const struct place *p, const char *prefix, char *name, size_t size) {
    int fd;
    do {
        fresh_name(name, size, prefix);
        fd = open_in(p, name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0600);
    } while (fd < 0 && errno == EEXIST);
    if (fd < 0)
        die("open", name);
    close(fd);
}

static void mutex_round_trips(const struct place *p, long n) {
    for (long i = 0; i < n; i++)
        mutex->release(p, mutex->acquire(p, MUTEX_FILE), MUTEX_FILE);
}

static void arena_cycles(const struct place *p, long n) {
    char member[PATH_MAX];
    for (long i = 0; i < n; i++)
        arena_leave(p, arena_enter(p, member, sizeof member), member);
}

/* Get a name, poll it (alive), then give it up as destroy_all_process_names does. */
static void name_cycles(const struct place *p, long n) {
    char name[PATH_MAX];
    for (long i = 0; i < n; i++) {
        int fd = claim(p, "", name, sizeof name);
        if (!probe(p, name))
            die("probe said dead", name);
        if (unlink_in(p, name) != 0)
            die("unlink", name);
        close(fd);
    }
}

/* Time n dead-name polls; the dead names are made first, untimed. */
static double dead_name_polls(const struct place *p, long n) {
    char (*names)[32] = malloc(n * sizeof *names);
    if (names == NULL)
        die("malloc", NULL);
    for (long i = 0; i < n; i++)
        make_dead_file(p, "", names[i], sizeof names[i]);
    int64_t start = now_ns();
    for (long i = 0; i < n; i++)
        if (probe(p, names[i]))
            die("probe said alive", names[i]);
    int64_t elapsed = now_ns() - start;
    free(names);
    return (double)elapsed / n;
}

/* Time one leave() that finds `members` dead members; they are made first, untimed. */
static double cleanup_leave(const struct place *p, long members) {
    char member[PATH_MAX], dead[PATH_MAX];
    int fd = arena_enter(p, member, sizeof member);
    for (long i = 0; i < members; i++)
        make_dead_file(p, MEMBERS "/", dead, sizeof dead);
    int64_t start = now_ns();
    arena_leave(p, fd, member);
    return now_ns() - start;
}

/* The bucket of a wait: its value below 32 ns, then sixteen buckets per power of two. */
static int wait_bucket(int64_t ns) {
    if (ns < 32)
        return ns < 0 ? 0 : (int)ns;
    if (ns > WAIT_LONGEST)
        ns = WAIT_LONGEST;
    int exponent = 63 - __builtin_clzll((uint64_t)ns);
    return (exponent - 3) * 16 + (int)((ns >> (exponent - 4)) & 15);
}

/* One acquisition under contention: how long taking it took, and when it was had. */
struct round {
    int64_t waited_ns;
    int64_t had_ns;
};

/* The work of contend-work, named as the variant names files: open the data file, write
   this process's count of writes at its start, close it. */
static void critical_work(const struct place *p) {
    static int64_t written;
    written++;
    int fd = open_in(p, DATA_FILE, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        die("open", DATA_FILE);
    if (pwrite(fd, &written, sizeof written, 0) != (ssize_t)sizeof written)
        die("pwrite", DATA_FILE);
    close(fd);
}

static struct round mutex_round(const struct place *p) {
    int64_t began = now_ns();
    int fd = mutex->acquire(p, MUTEX_FILE);
    int64_t had = now_ns();
    if (work_in_mutex)
        critical_work(p);
    mutex->release(p, fd, MUTEX_FILE);
    return (struct round){had - began, had};
}

/* One enter + leave of the arena; the wait is the time enter took. */
static struct round arena_round(const struct place *p) {
    char member[PATH_MAX];
    int64_t began = now_ns();
    int fd = arena_enter(p, member, sizeof member);
    int64_t had = now_ns();
    arena_leave(p, fd, member);
    return (struct round){had - began, had};
}

/* What one contending process did, written by it into memory shared with the parent. */
struct contender {
    long acquisitions;
    int64_t longest_wait_ns;
    uint32_t wait_histogram[WAIT_BUCKETS];
};

/* Shared between the contending processes: when to start, and what each did. */
struct race {
    int64_t start_ns;
    struct contender contenders[];
};

/* A contending process: rounds until the deadline; each wait is kept in memory during
   the run (a store, nothing more) and binned into the shared histogram after it.  Only
   rounds had by the deadline count. */
static void contend(const struct place *p, struct round (*one_round)(const struct place *),
                    int64_t deadline, struct contender *out) {
    size_t count = 0, capacity = 1 << 14;
    int64_t *waits = malloc(capacity * sizeof *waits);
    if (waits == NULL)
        die("malloc", NULL);
    for (;;) {
        struct round done = one_round(p);
        if (done.had_ns > deadline)
            break;
        if (count == capacity) {
            capacity *= 2;
            if ((waits = realloc(waits, capacity * sizeof *waits)) == NULL)
                die("realloc", NULL);
        }
        waits[count++] = done.waited_ns;
    }
    out->acquisitions = (long)count;
    for (size_t i = 0; i < count; i++) {
        out->wait_histogram[wait_bucket(waits[i])]++;
        if (waits[i] > out->longest_wait_ns)
            out->longest_wait_ns = waits[i];
    }
    free(waits);
}

/* P processes take and release one mutex (working while they hold it, or not), or enter
   and leave one arena, until the time is up; prints the run's JSON object. */
static void contended_run(const struct place *p, struct round (*one_round)(const struct place *),
                          int processes, long ms, bool first) {
    size_t size = sizeof(struct race) + processes * sizeof(struct contender);
    struct race *race = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int ready[2], go[2];
    if (race == MAP_FAILED || pipe(ready) != 0 || pipe(go) != 0)
        die("setup", NULL);
    fflush(stdout); /* not to print twice what the children inherit */
    for (int i = 0; i < processes; i++) {
        pid_t pid = fork();
        if (pid < 0)
            die("fork", NULL);
        if (pid == 0) {
            char byte = 0;
            close(go[1]);
            seed_names();
            if (write(ready[1], &byte, 1) != 1 || read(go[0], &byte, 1) != 0)
                _exit(1); /* read returns 0 when the parent closes go: start */
            contend(p, one_round, race->start_ns + ms * 1000000, &race->contenders[i]);
            _exit(0);
        }
    }
    char byte;
    for (int i = 0; i < processes; i++)
        if (read(ready[0], &byte, 1) != 1)
            die("wait for children", NULL);
    race->start_ns = now_ns();
    close(go[1]);
    for (int i = 0; i < processes; i++) {
        int status;
        if (wait(&status) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
            die("child failed", NULL);
    }
    close(go[0]), close(ready[0]), close(ready[1]);

    long total = 0;
    int64_t longest = 0;
    for (int i = 0; i < processes; i++) {
        total += race->contenders[i].acquisitions;
        if (race->contenders[i].longest_wait_ns > longest)
            longest = race->contenders[i].longest_wait_ns;
    }
    printf("%s{\"per_second\": %.1f, \"acquisitions\": [", first ? "" : ", ", total * 1000.0 / ms);
    for (int i = 0; i < processes; i++)
        printf("%s%ld", i ? ", " : "", race->contenders[i].acquisitions);
    printf("], \"longest_wait_ns\": %lld, \"wait_histogram\": [", (long long)longest);
    bool any = false;
    for (int bucket = 0; bucket < WAIT_BUCKETS; bucket++) {
        uint64_t count = 0;
        for (int i = 0; i < processes; i++)
            count += race->contenders[i].wait_histogram[bucket];
        if (count) {
            printf("%s[%d, %llu]", any ? ", " : "", bucket, (unsigned long long)count);
            any = true;
        }
    }
    printf("]}");
    munmap(race, size);
}

/* Time n runs of an iterated operation, after an untimed warm-up; ns per operation. */
static double per_operation(void (*operation)(const struct place *, long), const struct place *p, long n) {
    operation(p, n < 200 ? n : 200);
    int64_t start = now_ns();
    operation(p, n);
    return (double)(now_ns() - start) / n;
}

/* cpu-walk: the system calls one cpu_count(refresh=True) made, as $FLOOR_WALK lists them,
   a step a line: "online" (sysconf, which reads sysfs), "affinity", "stat PATH", or "read
   PATH" (open, fstat, read to the end, close). */
static char *walk_steps[64];
static int walk_step_count;

static void cpu_walks(const struct place *p, long n) {
    (void)p;
    static char buffer[1 << 16];
    cpu_set_t set;
    struct stat st;
    for (long i = 0; i < n; i++)
        for (int s = 0; s < walk_step_count; s++) {
            const char *step = walk_steps[s];
            if (strcmp(step, "online") == 0)
                sysconf(_SC_NPROCESSORS_ONLN);
            else if (strcmp(step, "affinity") == 0)
                sched_getaffinity(0, sizeof set, &set);
            else if (strncmp(step, "stat ", 5) == 0)
                stat(step + 5, &st);
            else if (strncmp(step, "read ", 5) == 0) {
                int fd = open(step + 5, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
                if (fd < 0)
                    continue;
                fstat(fd, &st);
                ssize_t got, length = 0;
                while ((got = read(fd, buffer + length, sizeof buffer - length)) > 0)
                    length += got;
                close(fd);
            }
        }
}

static void read_walk_steps(void) {
    char *steps = getenv("FLOOR_WALK");
    for (char *step = steps ? strtok(steps, "\n") : NULL; step; step = strtok(NULL, "\n"))
        if (walk_step_count < (int)(sizeof walk_steps / sizeof *walk_steps))
            walk_steps[walk_step_count++] = step;
}

static long number(const char *text) {
    char *end;
    long value = strtol(text, &end, 10);
    if (*text == '\0' || *end != '\0' || value < 1) {
        fprintf(stderr, "floor: not a positive number: %s\n", text);
        exit(2);
    }
    return value;
}

static const char USAGE[] =
    "usage: floor VARIANT DIR OPERATION COUNT REPEATS\n"
    "       floor VARIANT DIR contend|contend-work|contend-arena PROCESSES MILLISECONDS REPEATS\n"
    "VARIANT: naive, dirrel (every operation); fewest, keep, announce (mutex, contend,\n"
    "         contend-work)\n"
    "OPERATION: mutex, arena, arena-cleanup, name-live, name-dead or cpu-walk\n";

static void usage(void) {
    fputs(USAGE, stderr);
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 4)
        usage();
    const char *operation = argv[3];
    work_in_mutex = strcmp(operation, "contend-work") == 0;
    bool contend_mutex = strcmp(operation, "contend") == 0 || work_in_mutex;
    bool contend_arena = strcmp(operation, "contend-arena") == 0;
    bool contention = contend_mutex || contend_arena;
    if (argc != (contention ? 7 : 6))
        usage();
    for (size_t i = 0; i < sizeof PROTOCOLS / sizeof *PROTOCOLS; i++)
        if (strcmp(argv[1], PROTOCOLS[i].variant) == 0)
            mutex = &PROTOCOLS[i];
    if (mutex == NULL || (mutex->mutex_only && !contend_mutex && strcmp(operation, "mutex") != 0))
        usage();
    struct place place = {argv[2], -1};
    if (strcmp(argv[1], "dirrel") == 0 && (place.fd = open(argv[2], O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0)
        die("open", argv[2]);
    long count = number(argv[4]);
    long repeats = number(argv[argc - 1]);
    if (repeats > MAX_SAMPLES) {
        fprintf(stderr, "floor: at most %d repeats\n", MAX_SAMPLES);
        return 2;
    }
    if (contention) {
        if (count > INT_MAX / (long)sizeof(struct contender))
            usage();
        long ms = number(argv[5]);
        printf("{\"operation\": \"%s\", \"variant\": \"%s\", \"runs\": [", operation, argv[1]);
        for (long r = 0; r < repeats; r++)
            contended_run(&place, contend_mutex ? mutex_round : arena_round, (int)count, ms, r == 0);
        printf("]}\n");
        return 0;
    }
    double samples[MAX_SAMPLES];
    read_walk_steps();
    for (long r = 0; r < repeats; r++) {
        if (strcmp(operation, "mutex") == 0)
            samples[r] = per_operation(mutex_round_trips, &place, count);
        else if (strcmp(operation, "arena") == 0)
            samples[r] = per_operation(arena_cycles, &place, count);
        else if (strcmp(operation, "arena-cleanup") == 0)
            samples[r] = cleanup_leave(&place, count);
        else if (strcmp(operation, "name-live") == 0)
            samples[r] = per_operation(name_cycles, &place, count);
        else if (strcmp(operation, "name-dead") == 0)
            samples[r] = dead_name_polls(&place, count);
        else if (strcmp(operation, "cpu-walk") == 0)
            samples[r] = per_operation(cpu_walks, &place, count);
        else
            usage();
    }
    printf("{\"operation\": \"%s\", \"variant\": \"%s\", \"samples\": [", operation, argv[1]);
    for (long r = 0; r < repeats; r++)
        printf("%s%.1f", r ? ", " : "", samples[r]);
    printf("]}\n");
    return 0;
}
