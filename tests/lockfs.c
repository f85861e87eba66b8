/*
 * lockfs: a FUSE passthrough filesystem on which record locks cross mounts and flock
 * locks do not, the way IBM GPFS behaves between two nodes.  A test fixture (lockfs.py).
 *
 *   lockfs BACKING_DIR MOUNTPOINT [FUSE options, e.g. -f]
 *
 * Each mount of one BACKING_DIR stands in for a node:
 *
 * - fcntl record locks (classic POSIX and OFD) are forwarded to the backing file as OFD
 *   locks on a backing descriptor private to that one open, so they conflict with locks
 *   taken through any other open, on any mount, and go when the open is released;
 * - there is no flock operation, so the kernel keeps flock(2) locks inside each mount;
 * - nothing is cached in the kernel (zero entry and attribute timeouts, no negative
 *   entries, direct I/O), so what one mount changes the other sees at once.
 *
 * Mounted with allow_other and default_permissions: the kernel checks permissions, and
 * what a caller creates is given to the caller.
 *
 * Where it differs from one local filesystem: a classic POSIX lock belongs here to the
 * open file it was taken through, not to the whole process, so one process's locks
 * through two separate opens of a file conflict, and closing one open leaves the locks
 * taken through the other; GETLK reports no pid; the RELEASE that drops an open's locks
 * reaches the daemon just after the client's last close(2) has returned.
 *
 * Written against the libfuse 3 low-level API (3.12 or later), so that this file decides
 * what happens to locks (the high-level API keeps a lock table of its own and unlocks on
 * every flush).  Build:
 *
 *   cc -Wall -O2 -o lockfs lockfs.c $(pkg-config --cflags --libs fuse3)
 *
 * LOCKFS_TRACE=1 in the environment logs every lock request, flush and release to stderr.
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 312

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <unistd.h>

/* Sent to a daemon thread blocked in F_OFD_SETLKW when its caller is interrupted. */
#define KICK_SIGNAL SIGUSR1
/* Every blocked lock request occupies a daemon thread; libfuse's default is 10. */
#define MIN_THREADS 1024

static int tracing;

static void trace(const char *format, ...) __attribute__((format(printf, 1, 2)));
static void trace(const char *format, ...)
{
    va_list args;
    if (!tracing)
        return;
    va_start(args, format);
    flockfile(stderr);
    fputs("lockfs: ", stderr);
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    funlockfile(stderr);
    va_end(args);
}

/* ------------------------------------------------------------------------------------
 * Inodes.  The kernel names an inode by the number we gave it in a lookup reply, until it
 * forgets it; ours is the address of a node holding an O_PATH descriptor of the backing
 * inode, which stays valid through renames and unlinks done by anyone.
 */

struct node {
    struct node *next; /* in its hash bucket */
    dev_t dev;
    ino_t ino;
    int fd;           /* O_PATH */
    uint64_t lookups; /* references the kernel holds */
};

#define BUCKETS 4096
static struct node *buckets[BUCKETS];
static pthread_mutex_t nodes_lock = PTHREAD_MUTEX_INITIALIZER;
static struct node root;

static struct node *node_of(fuse_ino_t ino)
{
    return ino == FUSE_ROOT_ID ? &root : (struct node *)(uintptr_t)ino;
}

static struct node **bucket_of(dev_t dev, ino_t ino)
{
    return &buckets[(dev * 31 + ino) % BUCKETS];
}

/*
 * Fill e for the inode path_fd (O_PATH, taken over) names, counting one more kernel
 * reference to it.  One node per backing inode, so hard links share one.
 */
static int remember(int path_fd, struct fuse_entry_param *e)
{
    struct stat st;
    struct node *found;

    if (fstatat(path_fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == -1) {
        int err = errno;
        close(path_fd);
        return err;
    }
    pthread_mutex_lock(&nodes_lock);
    for (found = *bucket_of(st.st_dev, st.st_ino); found; found = found->next)
        if (found->dev == st.st_dev && found->ino == st.st_ino)
            break;
    if (found) {
        found->lookups++;
    } else {
        found = calloc(1, sizeof *found);
        if (!found) {
            pthread_mutex_unlock(&nodes_lock);
            close(path_fd);
            return ENOMEM;
        }
        found->dev = st.st_dev;
        found->ino = st.st_ino;
        found->fd = path_fd;
        found->lookups = 1;
        found->next = *bucket_of(st.st_dev, st.st_ino);
        *bucket_of(st.st_dev, st.st_ino) = found;
        path_fd = -1;
    }
    pthread_mutex_unlock(&nodes_lock);
    /* The node's descriptor keeps the inode alive, so its number is not reused. */
    if (path_fd != -1)
        close(path_fd);

    memset(e, 0, sizeof *e);
    e->ino = (uintptr_t)found;
    e->attr = st; /* the backing inode number, as use_ino would give */
    e->attr_timeout = 0.0;
    e->entry_timeout = 0.0;
    return 0;
}

static int lookup_entry(struct node *parent, const char *name, struct fuse_entry_param *e)
{
    int fd = openat(parent->fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    return fd == -1 ? errno : remember(fd, e);
}

static void forget_node(fuse_ino_t ino, uint64_t count)
{
    struct node *node = node_of(ino);
    struct node **link;

    if (node == &root)
        return;
    pthread_mutex_lock(&nodes_lock);
    node->lookups -= count;
    if (node->lookups > 0) {
        pthread_mutex_unlock(&nodes_lock);
        return;
    }
    for (link = bucket_of(node->dev, node->ino); *link != node; link = &(*link)->next)
        ;
    *link = node->next;
    pthread_mutex_unlock(&nodes_lock);
    close(node->fd);
    free(node);
}

/* A path that reopens the inode an O_PATH descriptor names, whatever became of its name. */
static void proc_path(int fd, char *path, size_t size)
{
    snprintf(path, size, "/proc/self/fd/%d", fd);
}

/* What a caller creates belongs to the caller, not to this daemon (root). */
static int give_to_caller(fuse_req_t req, int dir_fd, const char *name, int fd)
{
    const struct fuse_ctx *caller = fuse_req_ctx(req);
    struct stat dir;
    gid_t gid = caller->gid;

    /* In a setgid folder the group comes from the folder, as the backing kernel set it. */
    if (fstatat(dir_fd, "", &dir, AT_EMPTY_PATH) == 0 && (dir.st_mode & S_ISGID))
        gid = (gid_t)-1;
    if (fd != -1)
        return fchown(fd, caller->uid, gid) == -1 ? errno : 0;
    return fchownat(dir_fd, name, caller->uid, gid, AT_SYMLINK_NOFOLLOW) == -1 ? errno : 0;
}

/* ------------------------------------------------------------------------------------
 * Open files and their locks.
 */

struct open_file {
    int fd; /* the backing descriptor: its OFD locks are this open's record locks */
    pthread_mutex_t lock;
    /*
     * Lock owners that have locked through this open.  The kernel names the owner of an
     * OFD lock by the open file, and of a classic POSIX lock by the process (its file
     * table), which FLUSH names too.  Keeping them apart lets a flush drop the locks of
     * the process closing a descriptor (POSIX says close drops them) and nothing else.
     */
    uint64_t *owners;
    size_t n_owners;
};

static struct open_file *open_file_of(struct fuse_file_info *fi)
{
    return (struct open_file *)(uintptr_t)fi->fh;
}

static int note_owner(struct open_file *of, uint64_t owner)
{
    int err = 0;
    size_t i;

    pthread_mutex_lock(&of->lock);
    for (i = 0; i < of->n_owners && of->owners[i] != owner; i++)
        ;
    if (i == of->n_owners) {
        uint64_t *grown = realloc(of->owners, (of->n_owners + 1) * sizeof *grown);
        if (grown) {
            of->owners = grown;
            of->owners[of->n_owners++] = owner;
        } else {
            err = ENOMEM;
        }
    }
    pthread_mutex_unlock(&of->lock);
    return err;
}

/* Whether owner has locked through this open; forget it too when asked. */
static int has_owner(struct open_file *of, uint64_t owner, int forget)
{
    size_t i;
    int found;

    pthread_mutex_lock(&of->lock);
    for (i = 0; i < of->n_owners && of->owners[i] != owner; i++)
        ;
    found = i < of->n_owners;
    if (found && forget)
        of->owners[i] = of->owners[--of->n_owners];
    pthread_mutex_unlock(&of->lock);
    return found;
}

static void reply_opened(fuse_req_t req, int fd, struct fuse_file_info *fi,
                         const struct fuse_entry_param *created)
{
    struct open_file *of = calloc(1, sizeof *of);

    if (!of) {
        close(fd);
        fuse_reply_err(req, ENOMEM);
        return;
    }
    of->fd = fd;
    pthread_mutex_init(&of->lock, NULL);
    fi->fh = (uintptr_t)of;
    /* No page cache: reads and writes go to the backing file, as on a coherent cluster FS. */
    fi->direct_io = 1;
    fi->keep_cache = 0;
    if (created)
        fuse_reply_create(req, created, fi);
    else
        fuse_reply_open(req, fi);
}

static const char *lock_type_name(short type)
{
    return type == F_RDLCK ? "read" : type == F_WRLCK ? "write" : type == F_UNLCK ? "unlock" : "?";
}

static void do_getlk(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
                     struct flock *lock)
{
    struct open_file *of = open_file_of(fi);
    struct flock fl = *lock;

    fl.l_pid = 0; /* required by OFD requests */
    if (fcntl(of->fd, F_OFD_GETLK, &fl) == -1) {
        fuse_reply_err(req, errno);
        return;
    }
    trace("getlk fd %d owner %#llx %s -> %s", of->fd, (unsigned long long)fi->lock_owner,
          lock_type_name(lock->l_type), lock_type_name(fl.l_type));
    /* An OFD conflict has no pid (-1); the holder may be on another mount anyway. */
    fl.l_pid = 0;
    fuse_reply_lock(req, &fl);
    (void)ino;
}

struct waiter {
    pthread_t thread;
    atomic_int interrupted;
};

static void kick_waiter(fuse_req_t req, void *data)
{
    struct waiter *waiter = data;

    atomic_store(&waiter->interrupted, 1);
    pthread_kill(waiter->thread, KICK_SIGNAL);
    (void)req;
}

/*
 * F_OFD_SETLKW in this thread only (the loop is multi-threaded).  When the caller is
 * interrupted (a signal, including SIGKILL) the kernel sends INTERRUPT, libfuse calls
 * kick_waiter from another thread, and the signal ends the wait with EINTR.  A kick that
 * lands between the check and the system call is lost: the caller then waits until it is
 * granted the lock (and, if it was killed, drops it again at once by dying).
 */
static int wait_for_lock(fuse_req_t req, int fd, struct flock *fl)
{
    struct waiter waiter = {.thread = pthread_self()};
    int err = EINTR;

    atomic_init(&waiter.interrupted, 0);
    fuse_req_interrupt_func(req, kick_waiter, &waiter);
    while (!atomic_load(&waiter.interrupted)) {
        if (fcntl(fd, F_OFD_SETLKW, fl) == 0) {
            err = 0;
            break;
        }
        if (errno != EINTR) {
            err = errno;
            break;
        }
    }
    /* Returns once a kick in progress is over, so waiter may go out of scope. */
    fuse_req_interrupt_func(req, NULL, NULL);
    return err;
}

static void do_setlk(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
                     struct flock *lock, int sleep)
{
    struct open_file *of = open_file_of(fi);
    struct flock fl = *lock;
    int err = 0;

    fl.l_pid = 0;
    if (fl.l_type == F_UNLCK) {
        /* An owner that locked nothing here holds nothing here: leave others' locks be. */
        if (has_owner(of, fi->lock_owner, 0)) {
            if (fcntl(of->fd, F_OFD_SETLK, &fl) == -1)
                err = errno;
            else if (fl.l_start == 0 && fl.l_len == 0)
                has_owner(of, fi->lock_owner, 1);
        }
    } else {
        if (sleep)
            err = wait_for_lock(req, of->fd, &fl);
        else if (fcntl(of->fd, F_OFD_SETLK, &fl) == -1)
            err = errno;
        if (!err)
            err = note_owner(of, fi->lock_owner);
    }
    trace("setlk%s fd %d owner %#llx pid %d %s %lld+%lld -> %s", sleep ? "w" : "", of->fd,
          (unsigned long long)fi->lock_owner, (int)lock->l_pid, lock_type_name(lock->l_type),
          (long long)lock->l_start, (long long)lock->l_len, err ? strerror(err) : "ok");
    fuse_reply_err(req, err);
    (void)ino;
}

static void do_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct open_file *of = open_file_of(fi);
    int dropped = has_owner(of, fi->lock_owner, 1);

    /* close(2) of any descriptor drops the classic POSIX locks its process holds. */
    if (dropped) {
        struct flock all = {.l_type = F_UNLCK, .l_whence = SEEK_SET};
        fcntl(of->fd, F_OFD_SETLK, &all);
    }
    trace("flush fd %d owner %#llx%s", of->fd, (unsigned long long)fi->lock_owner,
          dropped ? ": its locks dropped" : "");
    fuse_reply_err(req, 0);
    (void)ino;
}

static void do_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct open_file *of = open_file_of(fi);

    /* The last close of the client's open file, or its holder's death: the backing
     * descriptor's locks go with it.  The kernel sends this without waiting for it. */
    trace("release fd %d", of->fd);
    close(of->fd);
    pthread_mutex_destroy(&of->lock);
    free(of->owners);
    free(of);
    fuse_reply_err(req, 0);
    (void)ino;
}

/* ------------------------------------------------------------------------------------
 * Everything else: forwarded to the backing inode.
 */

static void do_init(void *userdata, struct fuse_conn_info *conn)
{
    if (!(conn->capable & FUSE_CAP_POSIX_LOCKS))
        fprintf(stderr, "lockfs: this kernel does not pass record locks to FUSE\n");
    /* The kernel then keeps flock(2) locks inside each mount: the point of lockfs. */
    conn->want &= ~FUSE_CAP_FLOCK_LOCKS;
    conn->want |= conn->capable & FUSE_CAP_POSIX_LOCKS;
    /* Our writes run as root, which keeps setuid bits: let the kernel clear them. */
    conn->want &= ~(FUSE_CAP_HANDLE_KILLPRIV | FUSE_CAP_WRITEBACK_CACHE);
    (void)userdata;
}

static void do_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct fuse_entry_param e;
    /* Replying ENOENT (not a zero inode) leaves the kernel no negative entry to cache. */
    int err = lookup_entry(node_of(parent), name, &e);

    if (err)
        fuse_reply_err(req, err);
    else
        fuse_reply_entry(req, &e);
}

static void do_forget(fuse_req_t req, fuse_ino_t ino, uint64_t count)
{
    forget_node(ino, count);
    fuse_reply_none(req);
}

static void do_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
    for (size_t i = 0; i < count; i++)
        forget_node(forgets[i].ino, forgets[i].nlookup);
    fuse_reply_none(req);
}

static void reply_attr(fuse_req_t req, struct node *node)
{
    struct stat st;

    if (fstatat(node->fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == -1)
        fuse_reply_err(req, errno);
    else
        fuse_reply_attr(req, &st, 0.0);
}

static void do_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    reply_attr(req, node_of(ino));
    (void)fi;
}

static void do_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                       struct fuse_file_info *fi)
{
    struct node *node = node_of(ino);
    char path[64];
    int failed = 0;

    /* By path through /proc: works for unlinked files and whatever the open mode was. */
    proc_path(node->fd, path, sizeof path);
    if (to_set & FUSE_SET_ATTR_MODE)
        failed = chmod(path, attr->st_mode) == -1;
    if (!failed && (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID))) {
        uid_t uid = (to_set & FUSE_SET_ATTR_UID) ? attr->st_uid : (uid_t)-1;
        gid_t gid = (to_set & FUSE_SET_ATTR_GID) ? attr->st_gid : (gid_t)-1;
        failed = fchownat(node->fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == -1;
    }
    if (!failed && (to_set & FUSE_SET_ATTR_SIZE))
        failed = truncate(path, attr->st_size) == -1;
    if (!failed && (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME))) {
        struct timespec times[2] = {{.tv_nsec = UTIME_OMIT}, {.tv_nsec = UTIME_OMIT}};
        if (to_set & FUSE_SET_ATTR_ATIME_NOW)
            times[0].tv_nsec = UTIME_NOW;
        else if (to_set & FUSE_SET_ATTR_ATIME)
            times[0] = attr->st_atim;
        if (to_set & FUSE_SET_ATTR_MTIME_NOW)
            times[1].tv_nsec = UTIME_NOW;
        else if (to_set & FUSE_SET_ATTR_MTIME)
            times[1] = attr->st_mtim;
        failed = utimensat(AT_FDCWD, path, times, 0) == -1;
    }
    if (failed)
        fuse_reply_err(req, errno);
    else
        reply_attr(req, node);
    (void)fi;
}

static void do_readlink(fuse_req_t req, fuse_ino_t ino)
{
    char target[PATH_MAX + 1];
    ssize_t length = readlinkat(node_of(ino)->fd, "", target, PATH_MAX);

    if (length == -1) {
        fuse_reply_err(req, errno);
        return;
    }
    target[length] = '\0';
    fuse_reply_readlink(req, target);
}

/* After making name in parent: hand it to the caller and reply with its entry. */
static void reply_made(fuse_req_t req, struct node *parent, const char *name, int failed)
{
    struct fuse_entry_param e;
    int err = failed ? errno : give_to_caller(req, parent->fd, name, -1);

    if (!err)
        err = lookup_entry(parent, name, &e);
    if (err)
        fuse_reply_err(req, err);
    else
        fuse_reply_entry(req, &e);
}

static void do_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                     dev_t rdev)
{
    struct node *dir = node_of(parent);
    reply_made(req, dir, name, mknodat(dir->fd, name, mode, rdev) == -1);
}

static void do_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    struct node *dir = node_of(parent);
    reply_made(req, dir, name, mkdirat(dir->fd, name, mode) == -1);
}

static void do_symlink(fuse_req_t req, const char *target, fuse_ino_t parent, const char *name)
{
    struct node *dir = node_of(parent);
    reply_made(req, dir, name, symlinkat(target, dir->fd, name) == -1);
}

static void do_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t parent, const char *name)
{
    struct node *dir = node_of(parent);
    struct fuse_entry_param e;
    int err = 0;

    if (linkat(node_of(ino)->fd, "", dir->fd, name, AT_EMPTY_PATH) == -1)
        err = errno;
    if (!err)
        err = lookup_entry(dir, name, &e);
    if (err)
        fuse_reply_err(req, err);
    else
        fuse_reply_entry(req, &e);
}

static void do_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    fuse_reply_err(req, unlinkat(node_of(parent)->fd, name, 0) == -1 ? errno : 0);
}

static void do_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    fuse_reply_err(req, unlinkat(node_of(parent)->fd, name, AT_REMOVEDIR) == -1 ? errno : 0);
}

static void do_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned int flags)
{
    int failed = renameat2(node_of(parent)->fd, name, node_of(newparent)->fd, newname, flags);
    fuse_reply_err(req, failed == -1 ? errno : 0);
}

/* Flags for reopening: creation was settled by the kernel or by do_create, O_NOFOLLOW would
 * refuse the /proc link itself, and O_DIRECT would impose alignment on the caller's I/O. */
static int open_flags(int flags)
{
    return (flags & ~(O_CREAT | O_EXCL | O_NOCTTY | O_NOFOLLOW | O_DIRECT)) | O_CLOEXEC;
}

static void do_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    char path[64];
    int fd;

    proc_path(node_of(ino)->fd, path, sizeof path);
    fd = open(path, open_flags(fi->flags));
    if (fd == -1)
        fuse_reply_err(req, errno);
    else
        reply_opened(req, fd, fi, NULL);
}

static void do_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi)
{
    struct node *dir = node_of(parent);
    int flags = open_flags(fi->flags) | O_NOFOLLOW;
    struct fuse_entry_param e;
    char path[64];
    int fd, err, path_fd;

    /* Create exclusively, so that we know whether the caller made it (and owns it). */
    for (;;) {
        fd = openat(dir->fd, name, flags | O_CREAT | O_EXCL, mode);
        if (fd != -1) {
            err = give_to_caller(req, dir->fd, name, fd);
            break;
        }
        err = errno;
        if (err != EEXIST || (fi->flags & O_EXCL))
            break;
        fd = openat(dir->fd, name, flags);
        err = fd == -1 ? errno : 0;
        if (err != ENOENT) /* ENOENT: another mount removed it meanwhile; create again */
            break;
    }
    if (!err) {
        proc_path(fd, path, sizeof path);
        path_fd = open(path, O_PATH | O_CLOEXEC);
        err = path_fd == -1 ? errno : remember(path_fd, &e);
    }
    if (err) {
        if (fd != -1)
            close(fd);
        fuse_reply_err(req, err);
        return;
    }
    reply_opened(req, fd, fi, &e);
}

static void do_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset,
                    struct fuse_file_info *fi)
{
    char *buffer = malloc(size ? size : 1);
    ssize_t got;

    if (!buffer) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    got = pread(open_file_of(fi)->fd, buffer, size, offset);
    if (got == -1)
        fuse_reply_err(req, errno);
    else
        fuse_reply_buf(req, buffer, (size_t)got);
    free(buffer);
    (void)ino;
}

static void do_write(fuse_req_t req, fuse_ino_t ino, const char *buffer, size_t size,
                     off_t offset, struct fuse_file_info *fi)
{
    /* Opened with the caller's O_APPEND, so appends land at the end as it is now. */
    ssize_t put = pwrite(open_file_of(fi)->fd, buffer, size, offset);

    if (put == -1)
        fuse_reply_err(req, errno);
    else
        fuse_reply_write(req, (size_t)put);
    (void)ino;
}

static void do_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    int fd = open_file_of(fi)->fd;
    int failed = datasync ? fdatasync(fd) : fsync(fd);

    fuse_reply_err(req, failed == -1 ? errno : 0);
    (void)ino;
}

struct dir_handle {
    DIR *dir;
    off_t offset;          /* where the next entry read from dir is */
    struct dirent *pending; /* read, but did not fit in the last reply */
};

static struct dir_handle *dir_of(struct fuse_file_info *fi)
{
    return (struct dir_handle *)(uintptr_t)fi->fh;
}

static void do_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct dir_handle *handle = calloc(1, sizeof *handle);
    int fd = openat(node_of(ino)->fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int err = fd == -1 ? errno : 0;

    if (!err && !handle)
        err = ENOMEM;
    if (!err && !(handle->dir = fdopendir(fd)))
        err = errno;
    if (err) {
        if (fd != -1)
            close(fd);
        free(handle);
        fuse_reply_err(req, err);
        return;
    }
    fi->fh = (uintptr_t)handle;
    fuse_reply_open(req, fi);
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset,
                       struct fuse_file_info *fi)
{
    struct dir_handle *handle = dir_of(fi);
    char *buffer = malloc(size ? size : 1);
    size_t used = 0;
    int err = 0;

    if (!buffer) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    if (offset != handle->offset) {
        seekdir(handle->dir, offset);
        handle->offset = offset;
        handle->pending = NULL;
    }
    for (;;) {
        struct dirent *entry = handle->pending;
        struct stat st;
        size_t needed;

        if (!entry) {
            errno = 0;
            entry = readdir(handle->dir);
            if (!entry) {
                err = errno;
                break;
            }
        }
        memset(&st, 0, sizeof st);
        st.st_ino = entry->d_ino;
        st.st_mode = DTTOIF(entry->d_type);
        needed = fuse_add_direntry(req, buffer + used, size - used, entry->d_name, &st,
                                   entry->d_off);
        if (needed > size - used) {
            handle->pending = entry;
            break;
        }
        used += needed;
        handle->pending = NULL;
        handle->offset = entry->d_off;
    }
    /* Entries already gathered go out; the error, if any, comes with the next call. */
    if (err && used == 0)
        fuse_reply_err(req, err);
    else
        fuse_reply_buf(req, buffer, used);
    free(buffer);
    (void)ino;
}

static void do_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    closedir(dir_of(fi)->dir);
    free(dir_of(fi));
    fuse_reply_err(req, 0);
    (void)ino;
}

static void do_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    int fd = dirfd(dir_of(fi)->dir);
    int failed = datasync ? fdatasync(fd) : fsync(fd);

    fuse_reply_err(req, failed == -1 ? errno : 0);
    (void)ino;
}

static void do_statfs(fuse_req_t req, fuse_ino_t ino)
{
    struct statvfs sv;

    if (fstatvfs(node_of(ino)->fd, &sv) == -1)
        fuse_reply_err(req, errno);
    else
        fuse_reply_statfs(req, &sv);
}

static const struct fuse_lowlevel_ops operations = {
    .init = do_init,
    .lookup = do_lookup,
    .forget = do_forget,
    .forget_multi = do_forget_multi,
    .getattr = do_getattr,
    .setattr = do_setattr,
    .readlink = do_readlink,
    .mknod = do_mknod,
    .mkdir = do_mkdir,
    .symlink = do_symlink,
    .link = do_link,
    .unlink = do_unlink,
    .rmdir = do_rmdir,
    .rename = do_rename,
    .open = do_open,
    .create = do_create,
    .read = do_read,
    .write = do_write,
    .flush = do_flush,
    .release = do_release,
    .fsync = do_fsync,
    .opendir = do_opendir,
    .readdir = do_readdir,
    .releasedir = do_releasedir,
    .fsyncdir = do_fsyncdir,
    .statfs = do_statfs,
    .getlk = do_getlk,
    .setlk = do_setlk,
    /* No .flock: see the top of the file. */
};

static void ignore_kick(int signum)
{
    (void)signum;
}

int main(int argc, char *argv[])
{
    struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
    struct fuse_cmdline_opts opts;
    struct fuse_loop_config *config;
    struct fuse_session *session;
    struct sigaction kick = {.sa_handler = ignore_kick}; /* no SA_RESTART: a kick ends a wait */
    struct stat st;
    int status = 1;

    if (argc < 3 || argv[1][0] == '-') {
        fprintf(stderr, "usage: %s BACKING_DIR MOUNTPOINT [FUSE options]\n", argv[0]);
        return 2;
    }
    tracing = getenv("LOCKFS_TRACE") && strcmp(getenv("LOCKFS_TRACE"), "0") != 0;
    root.fd = open(argv[1], O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (root.fd == -1 || fstat(root.fd, &st) == -1) {
        fprintf(stderr, "lockfs: %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    root.dev = st.st_dev;
    root.ino = st.st_ino;
    root.lookups = 1;
    /* The kernel has applied the caller's umask already. */
    umask(0);
    sigemptyset(&kick.sa_mask);
    sigaction(KICK_SIGNAL, &kick, NULL);

    fuse_opt_add_arg(&args, argv[0]);
    for (int i = 2; i < argc; i++)
        fuse_opt_add_arg(&args, argv[i]);
    /* Other users (tests drop to nobody) may use it; the kernel checks permissions. */
    fuse_opt_add_arg(&args, "-ofsname=lockfs,subtype=lockfs,allow_other,default_permissions");
    if (fuse_parse_cmdline(&args, &opts) != 0)
        return 2;
    if (opts.show_help || opts.show_version || !opts.mountpoint) {
        fprintf(stderr, "usage: %s BACKING_DIR MOUNTPOINT [FUSE options]\n", argv[0]);
        fuse_cmdline_help();
        return opts.mountpoint ? 0 : 2;
    }
    if (opts.singlethread) {
        fprintf(stderr, "lockfs: -s refused: one blocked lock would stop the filesystem\n");
        return 2;
    }
    session = fuse_session_new(&args, &operations, sizeof operations, NULL);
    if (!session)
        goto out_args;
    if (fuse_set_signal_handlers(session) != 0)
        goto out_session;
    if (fuse_session_mount(session, opts.mountpoint) != 0)
        goto out_signals;
    fuse_daemonize(opts.foreground);
    config = fuse_loop_cfg_create();
    fuse_loop_cfg_set_clone_fd(config, (unsigned int)opts.clone_fd);
    fuse_loop_cfg_set_max_threads(config,
                                  opts.max_threads > MIN_THREADS ? opts.max_threads : MIN_THREADS);
    /* 0 when unmounted, the signal's number when stopped by one: both are clean. */
    status = fuse_session_loop_mt(session, config) < 0 ? 1 : 0;
    fuse_loop_cfg_destroy(config);
    fuse_session_unmount(session);
out_signals:
    fuse_remove_signal_handlers(session);
out_session:
    fuse_session_destroy(session);
out_args:
    free(opts.mountpoint);
    fuse_opt_free_args(&args);
    return status;
}
