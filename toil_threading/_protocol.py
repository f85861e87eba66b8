"""Every fact about the on-disk protocol and the filesystems it meets, in one place.

The names and modes on disk are Toil's, so processes running Toil's module and processes
running this package share one directory.  The filesystem table says, for each
filesystem and the mount options that change it, whether flock(2) and POSIX record
locks exclude between machines, and why; the strategy the package takes there follows
from it (toil_threading._filesystems).  Both cores, the facade and the command line read
this module; it imports only errno (built in), so importing it costs nothing at start-up.
"""

import errno

# The logger every module of the package logs to.
LOGGER_NAME = "toil_threading"

# A mutex M is the file MUTEX_PREFIX + M; an arena N is the mutex N + ARENA_MUTEX_SUFFIX
# and the directory N + ARENA_MEMBERS_SUFFIX.
MUTEX_PREFIX = "toil-mutex-"
ARENA_MUTEX_SUFFIX = "-arena-lock"
ARENA_MEMBERS_SUFFIX = "-arena-members"

# Name and member files are named as tempfile.mkstemp names them: NAME_PREFIX then
# NAME_LENGTH of NAME_CHARACTERS.
NAME_PREFIX = "tmp"
NAME_LENGTH = 8
NAME_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789_"

# Longest file name most filesystems allow, in bytes.
NAME_MAX = 255

# Modes asked for at creation (the umask applies).  Name and member files are their
# owner's alone, as Toil's are: another user cannot open one, and so cannot lock it to
# make a dead name or member read alive (another user's probe judges such a file from
# /proc/locks instead).  A members directory that others may write to is made sticky, so
# that nobody removes another user's member.
MUTEX_FILE_MODE = 0o666
NAME_FILE_MODE = 0o600
MEMBERS_DIRECTORY_MODE = 0o777

# A directory descriptor argument meaning the working directory (AT_FDCWD's value on
# Linux); -1 is a closed directory, which every call refuses (EBADF).
WORKING_DIRECTORY = -100

# How many filesystems (devices) each core keeps a strategy for before reusing slots.
STRATEGIES_KEPT = 16

# What a probe finds at a name or member file.
ABSENT = 0  # nothing there (or it went away while we looked)
ALIVE = 1  # locked: its owner lives
DEAD = 2  # unlocked: its owner is dead (the file was kept: asked to, or it holds data)
REMOVED = 3  # unlocked, and removed by this probe
DENIED = 4  # cannot be opened (another user's file): alive or dead is unknown

# How a lock is taken on one filesystem: bits of a strategy, decided once per
# filesystem per process.
SHARED = 1  # shared between machines: caches may lie, so same-file checks reopen the path
RECORD_LOCK = 2  # an open-file-description record lock (F_OFD_SETLKW) besides the flock

# The retry policy for EIO and ENOLCK from a lock call, Toil's: attempts in all, first
# pause (seconds, doubled after each failure), longest pause.
DEFAULT_RETRY_POLICY = (10, 1.0, 60.0)
# What a core does after a failed lock call (as toil_threading._retry.after_lock_call
# decides): wait for the lock in the kernel now, or try again (after the pause, if one
# was due).  Any other answer is the errno to report.
WAIT = -1
AGAIN = 0
# A wait with a timeout polls: first pause and longest pause between tries (seconds).
POLL_FIRST = 0.001
POLL_CAP = 0.01
# A path that another client changed under our cache (ENOENT, ESTALE, EEXIST where none
# should be) is tried again this many times in a row, pausing from POLL_FIRST up to
# VANISHED_PAUSE_CAP: about 10 s in all, longer than a client's entry cache lives.
VANISHED_TRIES = 200
VANISHED_PAUSE_CAP = 0.05

# Files read from outside (cgroup files, the mount table, a captured system's files, the
# files schedulers' variables name) are each read whole into a buffer of one of these
# sizes, in bytes; a longer one is not read at all.
FIGURE_FILE_BYTES = 4096  # one figure: cpu.max, cpu.cfs_quota_us, a CPU list
STATUS_FILE_BYTES = 64 << 10  # /proc/PID/cgroup and status: a few dozen lines
TABLE_FILE_BYTES = 1 << 20  # mountinfo, a scheduler's host file, a captured environ
# Why such a file gave no figure, besides a failed system call's errno: errnos that no
# read of a regular file returns, so each names one reason.
TOO_LONG = errno.EFBIG
MALFORMED = errno.ENOEXEC
NOT_REGULAR = errno.ESPIPE
OUTSIDE_ROOT = errno.EXDEV  # a path that would leave a captured root

# Verdicts on a kind of lock (flock, or POSIX record locks) on one filesystem.
LOCAL = "local"  # a filesystem of this machine only
CLUSTER = "cluster"  # shared, and this kind of lock excludes across machines
NODE = "node"  # shared, but this kind of lock excludes only within one machine
REFUSED = "refused"  # this package will not lock there
UNKNOWN = "unknown"  # shared or possibly shared; behaviour across machines not known

# One row per filesystem: the name shown to people, its types as /proc/self/mountinfo
# names them, its statfs(2) f_type numbers (for systems without mountinfo), the verdict
# on flock and on record locks as commonly mounted, and why.  The README's matrix gives
# the source behind each row.
FILESYSTEMS = (
    ("tmpfs", ("tmpfs", "ramfs"), (0x01021994, 0x858458F6), LOCAL, LOCAL, "in memory"),
    ("ext4", ("ext2", "ext3", "ext4"), (0x0000EF53,), LOCAL, LOCAL, "a local disk"),
    ("xfs", ("xfs",), (0x58465342,), LOCAL, LOCAL, "a local disk"),
    ("btrfs", ("btrfs",), (0x9123683E,), LOCAL, LOCAL, "a local disk"),
    ("zfs", ("zfs",), (0x2FC12FC1,), LOCAL, LOCAL, "a local disk"),
    ("f2fs", ("f2fs",), (0xF2F52010,), LOCAL, LOCAL, "a local disk"),
    ("overlay", ("overlay",), (0x794C7630,), LOCAL, LOCAL, "a container's overlay"),
    (
        "NFS",
        ("nfs", "nfs4"),
        (0x00006969,),
        CLUSTER,
        CLUSTER,
        "NFS sends both kinds of lock to the server (local_lock=none)",
    ),
    (
        "Lustre",
        ("lustre",),
        (0x0BD00BD0,),
        UNKNOWN,
        UNKNOWN,
        "Lustre mounted with none of flock, localflock or noflock shown",
    ),
    (
        "GPFS",
        ("gpfs",),
        (0x47504653,),
        NODE,
        CLUSTER,
        "IBM Storage Scale keeps flock on each node; record locks are cluster-wide",
    ),
    (
        "BeeGFS",
        ("beegfs",),
        (0x19830326,),
        NODE,
        NODE,
        "BeeGFS keeps locks on each client unless its client config sets"
        " tuneUseGlobalFileLocks=true, which the mount does not show",
    ),
    (
        "Ceph",
        ("ceph", "fuse.ceph-fuse", "fuse.ceph"),
        (0x00C36400,),
        REFUSED,
        REFUSED,
        "flock on Ceph is known to hang or corrupt the MDS",
    ),
    (
        "DAOS",
        ("fuse.dfuse", "fuse.daos"),
        (),
        REFUSED,
        REFUSED,
        "DAOS dfuse grants one flock to two nodes at once",
    ),
    (
        "GlusterFS",
        ("fuse.glusterfs", "glusterfs"),
        (),
        CLUSTER,
        CLUSTER,
        "GlusterFS sends both kinds of lock to the bricks",
    ),
    ("GFS2", ("gfs2",), (0x01161970,), CLUSTER, CLUSTER, "GFS2 locks through the cluster's DLM"),
    (
        "OCFS2",
        ("ocfs2",),
        (0x7461636F,),
        CLUSTER,
        NODE,
        "OCFS2's own cluster stack (o2cb) locks flock across the cluster, record locks only"
        " on each node",
    ),
    (
        "SMB/CIFS",
        ("cifs", "smb3"),
        (0xFF534D42, 0xFE534D42, 0x0000517B),
        UNKNOWN,
        CLUSTER,
        "SMB sends byte-range locks to the server; what flock does depends on the server",
    ),
    ("sshfs", ("fuse.sshfs",), (), NODE, NODE, "sshfs sends no locks to the server"),
    ("9p", ("9p",), (0x01021997,), UNKNOWN, UNKNOWN, "9p locking depends on the server"),
    (
        "AFS",
        ("afs",),
        (0x5346414F, 0x6B414653),
        UNKNOWN,
        UNKNOWN,
        "AFS locking depends on the client and server",
    ),
    ("FUSE", (), (0x65735546,), UNKNOWN, UNKNOWN, "a FUSE filesystem of unknown kind"),
)

# Mount options that change a filesystem's verdicts: (mount types, option, flock, record
# locks, why).  The first option of this list found among a mount's options decides.
OPTION_RULES = (
    (("nfs", "nfs4"), "nolock", NODE, NODE, "NFS mounted nolock keeps all locks on this node"),
    (
        ("nfs", "nfs4"),
        "local_lock=all",
        NODE,
        NODE,
        "NFS mounted local_lock=all keeps all locks on this node",
    ),
    (
        ("nfs", "nfs4"),
        "local_lock=flock",
        NODE,
        CLUSTER,
        "NFS mounted local_lock=flock keeps flock on this node; record locks go to the server",
    ),
    (
        ("nfs", "nfs4"),
        "local_lock=posix",
        CLUSTER,
        NODE,
        "NFS mounted local_lock=posix keeps record locks on this node; flock goes to the server",
    ),
    (("lustre",), "noflock", REFUSED, REFUSED, "Lustre mounted noflock fails every lock"),
    (
        ("lustre",),
        "localflock",
        NODE,
        NODE,
        "Lustre mounted localflock keeps all locks on this node",
    ),
    (("lustre",), "flock", CLUSTER, CLUSTER, "Lustre mounted flock locks across the cluster"),
    (
        ("gfs2", "ocfs2"),
        "localflocks",
        NODE,
        NODE,
        "mounted localflocks, the cluster filesystem keeps all locks on this node",
    ),
    (
        ("ocfs2",),
        "cluster_stack=pcmk",
        CLUSTER,
        CLUSTER,
        "OCFS2 on the Pacemaker stack locks both kinds across the cluster",
    ),
    (
        ("ocfs2",),
        "cluster_stack=cman",
        CLUSTER,
        CLUSTER,
        "OCFS2 on the cman stack locks both kinds across the cluster",
    ),
    (
        ("cifs", "smb3"),
        "nobrl",
        NODE,
        NODE,
        "SMB mounted nobrl keeps all locks on this node",
    ),
)

# Where a filesystem is not in the table: one on a block device of this machine is local,
# one without (major device number 0: network, FUSE, virtual) is of unknown behaviour.
UNLISTED_ON_A_DISK = (LOCAL, LOCAL, "an unlisted filesystem on a local block device")
UNLISTED_ELSEWHERE = (UNKNOWN, UNKNOWN, "an unlisted filesystem that may be shared")
