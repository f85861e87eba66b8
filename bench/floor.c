/*
 * The system-call floor of toil_threading's operations: the same system calls on the
 * same files, from C, with nothing else around them.
 *
 *   floor VARIANT DIR mutex ITERATIONS REPEATS
 *   floor VARIANT DIR contend PROCESSES MILLISECONDS REPEATS
 *   floor VARIANT DIR arena ITERATIONS REPEATS
 *   floor VARIANT DIR arena-cleanup MEMBERS REPEATS
 *   floor VARIANT DIR name-live ITERATIONS REPEATS
 *   floor VARIANT DIR name-dead ITERATIONS REPEATS
 *
 * VARIANT "naive" names every file by its full path, as a straightforward
 * implementation would; "dirrel" opens DIR once (O_PATH) and works relative to it
 * (fstatfs, openat, fstatat, mkdirat, unlinkat).  Prints one JSON line: nanoseconds
 * per operation for each repeat ("contend": acquisitions per second for each repeat).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
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
#define MAX_SAMPLES 1000

/* Where files are named from: a full path prefix, or a directory descriptor. */
struct place {
    const char *path;
    int fd; /* -1 in the naive variant */
};

static void die(const char *what, const char *name) {
    fprintf(stderr, "floor: %s %s: %s\n", what, name ? name : "", strerror(errno));
    exit(1);
}

static int64_t now_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

/* The full path of name under place (the naive variant only). */
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

/* The filesystem check made before every mutex acquisition (refusing Ceph). */
static void check_filesystem(const struct place *p) {
    struct statfs info;
    if ((p->fd >= 0 ? fstatfs(p->fd, &info) : statfs(p->path, &info)) != 0)
        die("statfs", p->path);
}

static bool same_file(const struct place *p, int fd, const char *name) {
    struct stat held, named;
    if (fstat(fd, &held) != 0)
        die("fstat", name);
    if (stat_in(p, name, &named) != 0) {
        if (errno == ENOENT)
            return false;
        die("stat", name);
    }
    return held.st_dev == named.st_dev && held.st_ino == named.st_ino;
}

static int mutex_acquire(const struct place *p, const char *name) {
    check_filesystem(p);
    for (;;) {
        int fd = open_in(p, name, O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0666);
        if (fd < 0)
            die("open", name);
        if (flock(fd, LOCK_EX) != 0)
            die("flock", name);
        if (same_file(p, fd, name))
            return fd;
        close(fd); /* the previous holder unlinked it while we waited */
    }
}

/* Unlink (if still ours), unlock and close: the release of a mutex or a member. */
static void release(const struct place *p, int fd, const char *name) {
    if (same_file(p, fd, name) && unlink_in(p, name) != 0)
        die("unlink", name);
    flock(fd, LOCK_UN);
    close(fd);
}

/* Names like tempfile.mkstemp's, from a userspace generator (no system call). */
static void fresh_name(char *buffer, size_t size, const char *prefix) {
    static const char letters[] = "abcdefghijklmnopqrstuvwxyz0123456789_";
    static uint64_t state;
    char random[9];
    if (state == 0)
        state = ((uint64_t)now_ns() ^ ((uint64_t)getpid() << 32)) | 1;
    for (int i = 0; i < 8; i++) {
        state ^= state << 13, state ^= state >> 7, state ^= state << 17;
        random[i] = letters[state % 37];
    }
    random[8] = '\0';
    snprintf(buffer, size, "%stmp%s", prefix, random);
}

/* Create and lock a fresh name or member file; returns its descriptor. */
static int claim(const struct place *p, const char *prefix, char *name, size_t size) {
    for (;;) {
        fresh_name(name, size, prefix);
        int fd = open_in(p, name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0) {
            if (errno == EEXIST)
                continue;
            die("open", name);
        }
        if (flock(fd, LOCK_EX | LOCK_NB) != 0)
            die("flock", name);
        if (same_file(p, fd, name))
            return fd;
        close(fd);
    }
}

/* Is the name or member file held by a live owner?  A dead one's file is removed. */
static bool probe(const struct place *p, const char *name) {
    int fd = open_in(p, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0);
    if (fd < 0) {
        if (errno == ENOENT)
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
    int mutex = mutex_acquire(p, ARENA_MUTEX_FILE);
    if (mkdir_in(p, MEMBERS) != 0 && errno != EEXIST)
        die("mkdir", MEMBERS);
    int fd = claim(p, MEMBERS "/", member, size);
    release(p, mutex, ARENA_MUTEX_FILE);
    return fd;
}

static void arena_leave(const struct place *p, int fd, const char *member) {
    int mutex = mutex_acquire(p, ARENA_MUTEX_FILE);
    release(p, fd, member);
    if (scan_members(p) && rmdir_in(p, MEMBERS) != 0)
        die("rmdir", MEMBERS);
    release(p, mutex, ARENA_MUTEX_FILE);
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
        release(p, mutex_acquire(p, MUTEX_FILE), MUTEX_FILE);
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

/* Shared between the contending processes: when to start, and what each did. */
struct race {
    int64_t start_ns;
    long counts[];
};

/* P processes take and release one mutex until the time is up; acquisitions per second. */
static double contended_throughput(const struct place *p, int processes, long ms) {
    size_t size = sizeof(struct race) + processes * sizeof(long);
    struct race *race = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int ready[2], go[2];
    if (race == MAP_FAILED || pipe(ready) != 0 || pipe(go) != 0)
        die("setup", NULL);
    for (int i = 0; i < processes; i++) {
        pid_t pid = fork();
        if (pid < 0)
            die("fork", NULL);
        if (pid == 0) {
            char byte = 0;
            close(go[1]);
            if (write(ready[1], &byte, 1) != 1 || read(go[0], &byte, 1) != 0)
                _exit(1); /* read returns 0 when the parent closes go: start */
            int64_t deadline = race->start_ns + ms * 1000000;
            long count = 0;
            for (;;) {
                release(p, mutex_acquire(p, MUTEX_FILE), MUTEX_FILE);
                if (now_ns() > deadline)
                    break;
                count++;
            }
            race->counts[i] = count;
            _exit(0);
        }
    }
    char byte;
    for (int i = 0; i < processes; i++)
        if (read(ready[0], &byte, 1) != 1)
            die("wait for children", NULL);
    race->start_ns = now_ns();
    close(go[1]);
    long total = 0;
    for (int i = 0; i < processes; i++) {
        int status;
        if (wait(&status) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
            die("child failed", NULL);
    }
    for (int i = 0; i < processes; i++)
        total += race->counts[i];
    close(go[0]), close(ready[0]), close(ready[1]);
    munmap(race, size);
    return total * 1000.0 / ms;
}

/* Time n runs of an iterated operation, after an untimed warm-up; ns per operation. */
static double per_operation(void (*operation)(const struct place *, long), const struct place *p, long n) {
    operation(p, n < 200 ? n : 200);
    int64_t start = now_ns();
    operation(p, n);
    return (double)(now_ns() - start) / n;
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
    "usage: floor naive|dirrel DIR OPERATION COUNT REPEATS\n"
    "       floor naive|dirrel DIR contend PROCESSES MILLISECONDS REPEATS\n"
    "OPERATION: mutex, arena, arena-cleanup, name-live or name-dead\n";

int main(int argc, char **argv) {
    bool contend = argc > 3 && strcmp(argv[3], "contend") == 0;
    if (argc != (contend ? 7 : 6) || (strcmp(argv[1], "naive") != 0 && strcmp(argv[1], "dirrel") != 0)) {
        fputs(USAGE, stderr);
        return 2;
    }
    struct place place = {argv[2], -1};
    if (strcmp(argv[1], "dirrel") == 0 && (place.fd = open(argv[2], O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0)
        die("open", argv[2]);
    const char *operation = argv[3];
    long count = number(argv[4]);
    long repeats = number(argv[argc - 1]);
    if (repeats > MAX_SAMPLES) {
        fprintf(stderr, "floor: at most %d repeats\n", MAX_SAMPLES);
        return 2;
    }
    double samples[MAX_SAMPLES];
    for (long r = 0; r < repeats; r++) {
        if (contend)
            samples[r] = contended_throughput(&place, count, number(argv[5]));
        else if (strcmp(operation, "mutex") == 0)
            samples[r] = per_operation(mutex_round_trips, &place, count);
        else if (strcmp(operation, "arena") == 0)
            samples[r] = per_operation(arena_cycles, &place, count);
        else if (strcmp(operation, "arena-cleanup") == 0)
            samples[r] = cleanup_leave(&place, count);
        else if (strcmp(operation, "name-live") == 0)
            samples[r] = per_operation(name_cycles, &place, count);
        else if (strcmp(operation, "name-dead") == 0)
            samples[r] = dead_name_polls(&place, count);
        else {
            fputs(USAGE, stderr);
            return 2;
        }
    }
    printf("{\"operation\": \"%s\", \"variant\": \"%s\", \"samples\": [", operation, argv[1]);
    for (long r = 0; r < repeats; r++)
        printf("%s%.1f", r ? ", " : "", samples[r]);
    printf("]}\n");
    return 0;
}
