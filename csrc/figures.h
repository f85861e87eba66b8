/* The files cpu_count() reads: opened without leaving a captured root, read with one
   bounded read into a fixed buffer, and parsed here, before any Python object is made.

   A failure is an errno: the system call's own, or one of these, which no read of a
   regular file returns, so each names one reason. */
#ifndef TOIL_THREADING_FIGURES_H
#define TOIL_THREADING_FIGURES_H
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define FIGURE_TOO_LONG EFBIG      /* longer than the buffer it is read into */
#define FIGURE_MALFORMED ENOEXEC   /* not in the file's format */
#define FIGURE_NOT_REGULAR ESPIPE  /* a FIFO, device, socket or directory */
#define FIGURE_OUTSIDE EXDEV       /* a path that leaves the captured root ("..", "/") */

/* Figures are at most this many digits: any real one has far fewer, and the value then
   fits in 64 bits without a check on each step. */
#define FIGURE_DIGITS 18
/* CPU numbers in a list ("0-3,8"): the kernel's NR_CPUS is far below this. */
#define CPU_NUMBER_DIGITS 7

/* openat2(2) (Linux 5.6) is declared by few C libraries: its number is 437 on every
   architecture, and its struct and flags are part of the kernel's stable interface. */
#if defined(__linux__)
#ifndef SYS_openat2
#define SYS_openat2 437
#endif
struct figure_open_how {
    uint64_t flags;
    uint64_t mode;
    uint64_t resolve;
};
#define FIGURE_RESOLVE_NO_MAGICLINKS 0x02
#define FIGURE_RESOLVE_NO_SYMLINKS 0x04
#define FIGURE_RESOLVE_BENEATH 0x08
#endif

#define FIGURE_OPEN (O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)

/* ".." as a whole component, or an absolute path: refused before any system call, so the
   kernel's walk and ours refuse the same paths. */
static int figure_leaves_root(const char *path) {
    if (path[0] == '/') return 1;
    for (const char *at = path; *at; ) {
        const char *end = strchr(at, '/');
        size_t length = end ? (size_t)(end - at) : strlen(at);
        if (length == 2 && at[0] == '.' && at[1] == '.') return 1;
        if (!end) break;
        at = end + 1;
    }
    return 0;
}

/* close(2) for a descriptor the walk is done with, keeping the errno that tells why. */
static void figure_close_keeping_errno(int fd) {
    int saved = errno;
    close(fd);
    errno = saved;
}

/* Beneath directory one component at a time, none followed if it is a link: where the
   kernel has no openat2.  A link in the middle of the path is refused as ELOOP, as
   openat2 refuses it. */
static int figure_open_walking(int directory, const char *path) {
    char component[256];
    int at = directory, fd;
    for (;;) {
        const char *end = strchr(path, '/');
        if (!end) { /* a trailing "/" names the directory reached */
            fd = openat(at, *path ? path : ".", FIGURE_OPEN | O_NOFOLLOW);
            break;
        }
        size_t length = (size_t)(end - path);
        if (length >= sizeof(component)) {
            errno = ENAMETOOLONG;
            fd = -1;
            break;
        }
        memcpy(component, path, length);
        component[length] = '\0';
        path = end + 1;
        if (length == 0 || (length == 1 && component[0] == '.')) continue;
        fd = openat(at, component, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 && errno == ENOTDIR) {
            struct stat found;
            if (fstatat(at, component, &found, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(found.st_mode))
                errno = ELOOP;
            else
                errno = ENOTDIR;
        }
        if (at != directory) figure_close_keeping_errno(at);
        if (fd < 0) return -1;
        at = fd;
    }
    if (at != directory) figure_close_keeping_errno(at);
    return fd;
}

/* The live system (directory is AT_FDCWD): path as the system resolves it.  A captured
   root (any other directory): path beneath it, with no link and no "..", so nothing
   outside the root is reached. */
static int figure_open(int directory, const char *path) {
    if (directory == AT_FDCWD) return open(path, FIGURE_OPEN);
    if (figure_leaves_root(path)) {
        errno = FIGURE_OUTSIDE;
        return -1;
    }
#if defined(__linux__)
    struct figure_open_how how = {
        FIGURE_OPEN | O_NOFOLLOW, 0,
        FIGURE_RESOLVE_BENEATH | FIGURE_RESOLVE_NO_SYMLINKS | FIGURE_RESOLVE_NO_MAGICLINKS};
    long fd = syscall(SYS_openat2, directory, path, &how, sizeof(how));
    /* ENOSYS: an older kernel; EPERM: a seccomp filter that refuses what it does not know. */
    if (fd >= 0 || (errno != ENOSYS && errno != EPERM)) return (int)fd;
#endif
    return figure_open_walking(directory, path);
}

/* The whole file at path into buffer (size bytes, then a NUL): its length, or -errno.
   Only a regular file is read (as /proc, sysfs and cgroup files are), so nothing blocks
   and nothing endless is read.  Read to its end, since a /proc file longer than a page
   comes a page or so per read(2); one byte more than fits is asked for, so a file that
   fills the buffer is too long.  EINTR is returned for the caller to run signal handlers. */
static ssize_t figure_read(int directory, const char *path, char *buffer, size_t size) {
    struct stat found;
    ssize_t length = 0, got;
    int fd = figure_open(directory, path), err = 0;
    if (fd < 0) return -errno;
    if (fstat(fd, &found) != 0) err = errno;
    else if (!S_ISREG(found.st_mode)) err = FIGURE_NOT_REGULAR;
    /* A size that says so (proc and sysfs files say 0) spares reading it. */
    else if (found.st_size > (off_t)size) err = FIGURE_TOO_LONG;
    while (!err) {
        got = read(fd, buffer + length, size + 1 - (size_t)length);
        if (got < 0) err = errno;
        else if (got == 0) break;
        else if ((size_t)(length += got) > size) err = FIGURE_TOO_LONG;
    }
    close(fd);
    if (err) return -err;
    buffer[length] = '\0';
    return length;
}

/* Parsing: each parser reads from *at and moves it past what it took. */

/* Decimal digits (ASCII only), at most limit of them: 1 with *value set, else 0. */
static int figure_digits(const char **at, int limit, int64_t *value) {
    const char *start = *at;
    int64_t total = 0;
    while (**at >= '0' && **at <= '9') {
        if (*at - start >= limit) return 0;
        total = total * 10 + (**at - '0');
        (*at)++;
    }
    *value = total;
    return *at > start;
}

static int figure_literal(const char **at, const char *word) {
    size_t length = strlen(word);
    if (strncmp(*at, word, length) != 0) return 0;
    *at += length;
    return 1;
}

/* The end of the text: nothing, or one newline. */
static int figure_end(const char *at, const char *end) {
    return at == end || (at + 1 == end && *at == '\n');
}

/* cgroup v2 cpu.max: "max PERIOD" or "QUOTA PERIOD"; max is -1. */
static int parse_cpu_max(const char *text, size_t length, int64_t *quota, int64_t *period) {
    const char *at = text, *end = text + length;
    if (figure_literal(&at, "max")) *quota = -1;
    else if (!figure_digits(&at, FIGURE_DIGITS, quota)) return FIGURE_MALFORMED;
    if (!figure_literal(&at, " ") || !figure_digits(&at, FIGURE_DIGITS, period) || *period < 1)
        return FIGURE_MALFORMED;
    return figure_end(at, end) ? 0 : FIGURE_MALFORMED;
}

/* cgroup v1 cpu.cfs_quota_us or cpu.cfs_period_us: a whole number, -1 for no quota. */
static int parse_cfs_figure(const char *text, size_t length, int64_t *value) {
    const char *at = text, *end = text + length;
    int negative = figure_literal(&at, "-");
    if (!figure_digits(&at, FIGURE_DIGITS, value) || !figure_end(at, end))
        return FIGURE_MALFORMED;
    if (negative) *value = -*value;
    return 0;
}

/* A CPU list ("0-3,8,10-11", empty for none) up to its newline or end: how many CPUs. */
static int parse_cpu_list(const char **at, const char *end, int64_t *count) {
    int64_t low, high;
    *count = 0;
    if (*at == end || **at == '\n') return 0;
    for (;;) {
        if (!figure_digits(at, CPU_NUMBER_DIGITS, &low)) return FIGURE_MALFORMED;
        high = low;
        if (figure_literal(at, "-") && (!figure_digits(at, CPU_NUMBER_DIGITS, &high) || high < low))
            return FIGURE_MALFORMED;
        *count += high - low + 1;
        if (!figure_literal(at, ",")) return 0;
    }
}

/* The CPU list of a whole file (key empty, as sysfs's "online"), or of the line "key:"
   with blanks before the list (as /proc/PID/status's Cpus_allowed_list). */
static int parse_keyed_cpu_list(const char *text, size_t length, const char *key, int64_t *count) {
    const char *at = text, *end = text + length;
    size_t key_length = strlen(key);
    if (key_length) {
        for (;;) {
            if (strncmp(at, key, key_length) == 0 && at[key_length] == ':') break;
            at = memchr(at, '\n', (size_t)(end - at));
            if (!at) return FIGURE_MALFORMED;
            at++;
        }
        at += key_length + 1;
        while (*at == ' ' || *at == '\t') at++;
    }
    int err = parse_cpu_list(&at, end, count);
    if (err) return err;
    if (key_length) return (at == end || *at == '\n') ? 0 : FIGURE_MALFORMED;
    return figure_end(at, end) ? 0 : FIGURE_MALFORMED;
}

/* /proc/PID/cgroup: "ID:CONTROLLERS:PATH" lines.  Finds the path of the v1 hierarchy with
   the cpu controller, and the v2 path (the "0::" line); each is (NULL, 0) where absent. */
static int parse_cgroup_membership(const char *text, size_t length, const char **v1, size_t *v1_length,
                                   const char **v2, size_t *v2_length) {
    const char *at = text, *end = text + length;
    int64_t id;
    *v1 = *v2 = NULL;
    *v1_length = *v2_length = 0;
    if (strlen(text) != length) return FIGURE_MALFORMED; /* a NUL inside */
    while (at < end) {
        const char *line_end = memchr(at, '\n', (size_t)(end - at));
        if (!line_end) line_end = end;
        if (!figure_digits(&at, FIGURE_DIGITS, &id) || !figure_literal(&at, ":"))
            return FIGURE_MALFORMED;
        const char *controllers = at;
        const char *colon = memchr(at, ':', (size_t)(line_end - at));
        if (!colon || colon + 1 == line_end || colon[1] != '/') return FIGURE_MALFORMED;
        size_t path_length = (size_t)(line_end - colon - 1);
        if (id == 0 && colon == controllers) {
            if (!*v2) *v2 = colon + 1, *v2_length = path_length;
        } else if (!*v1) {
            for (const char *name = controllers; name < colon;) {
                const char *comma = memchr(name, ',', (size_t)(colon - name));
                if (!comma) comma = colon;
                if (comma - name == 3 && strncmp(name, "cpu", 3) == 0) {
                    *v1 = colon + 1, *v1_length = path_length;
                    break;
                }
                name = comma + 1;
            }
        }
        at = line_end + 1;
    }
    return 0;
}

/* mountinfo's escapes (a space is "\040", a backslash "\134") undone in place: the new
   length, or -1 for an escape that makes a NUL, which no path holds. */
static ssize_t figure_unescape(char *field, size_t length) {
    size_t from = 0, to = 0;
    while (from < length) {
        const char *code = field + from + 1;
        if (field[from] == '\\' && from + 3 < length && code[0] >= '0' && code[0] <= '3' &&
            code[1] >= '0' && code[1] <= '7' && code[2] >= '0' && code[2] <= '7') {
            field[to] = (char)(((code[0] - '0') << 6) | ((code[1] - '0') << 3) | (code[2] - '0'));
            if (field[to++] == '\0') return -1;
            from += 4;
        } else {
            field[to++] = field[from++];
        }
    }
    return (ssize_t)to;
}

/* One line of /proc/PID/mountinfo, split in place (its fields' escapes undone):
   "ID PARENT MAJOR:MINOR ROOT POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER_OPTIONS". */
struct mount_line {
    int64_t major, minor;
    char *root, *point, *options, *type, *source, *super_options;
    size_t root_length, point_length, options_length, type_length, source_length,
        super_options_length;
};

/* The next space-separated field of a line: its start and length, the line moved past it. */
static int figure_field(char **at, char *line_end, char **field, size_t *length) {
    if (*at >= line_end || **at == ' ') return 0;
    *field = *at;
    char *space = memchr(*at, ' ', (size_t)(line_end - *at));
    if (!space) space = line_end;
    *length = (size_t)(space - *at);
    *at = space < line_end ? space + 1 : line_end;
    return 1;
}

static int parse_mount_line(char *at, char *line_end, struct mount_line *mount) {
    char *field;
    size_t length;
    const char *number;
    int64_t ignored;
    if (memchr(at, '\0', (size_t)(line_end - at))) return FIGURE_MALFORMED;
    for (int id = 0; id < 2; id++) {
        if (!figure_field(&at, line_end, &field, &length)) return FIGURE_MALFORMED;
        number = field;
        if (!figure_digits(&number, FIGURE_DIGITS, &ignored) || number != field + length)
            return FIGURE_MALFORMED;
    }
    if (!figure_field(&at, line_end, &field, &length)) return FIGURE_MALFORMED;
    number = field;
    if (!figure_digits(&number, FIGURE_DIGITS, &mount->major) || !figure_literal(&number, ":") ||
        !figure_digits(&number, FIGURE_DIGITS, &mount->minor) || number != field + length)
        return FIGURE_MALFORMED;
    if (!figure_field(&at, line_end, &mount->root, &mount->root_length) ||
        !figure_field(&at, line_end, &mount->point, &mount->point_length) ||
        !figure_field(&at, line_end, &mount->options, &mount->options_length))
        return FIGURE_MALFORMED;
    do { /* optional fields, up to the separator "-" */
        if (!figure_field(&at, line_end, &field, &length)) return FIGURE_MALFORMED;
    } while (!(length == 1 && field[0] == '-'));
    if (!figure_field(&at, line_end, &mount->type, &mount->type_length) ||
        !figure_field(&at, line_end, &mount->source, &mount->source_length))
        return FIGURE_MALFORMED;
    mount->super_options = at;
    mount->super_options_length = (size_t)(line_end - at);
    if (memchr(at, ' ', mount->super_options_length)) return FIGURE_MALFORMED;
    ssize_t root = figure_unescape(mount->root, mount->root_length);
    ssize_t point = figure_unescape(mount->point, mount->point_length);
    ssize_t source = figure_unescape(mount->source, mount->source_length);
    if (root < 0 || point < 0 || source < 0) return FIGURE_MALFORMED;
    mount->root_length = (size_t)root;
    mount->point_length = (size_t)point;
    mount->source_length = (size_t)source;
    return 0;
}

#endif
