"""Every fact about the on-disk protocol, in one place, and the words the cores and the
modules above them speak to each other in.

The names and modes on disk are Toil's, so processes running Toil's module and processes
running this package share one directory.  What each filesystem's locks do is
toil_threading._filesystems' to say.  Both cores, the facade and the command line read
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

# How many filesystems (devices) each core keeps the lock flags of before reusing slots.
LOCK_FLAGS_KEPT = 16

# What a probe finds at a name or member file.
ABSENT = 0  # nothing there (or it went away while we looked)
ALIVE = 1  # locked: its owner lives
DEAD = 2  # unlocked: its owner is dead (the file was kept: asked to, or it holds data)
REMOVED = 3  # unlocked, and removed by this probe
DENIED = 4  # cannot be opened (another user's file): alive or dead is unknown

# How a lock is taken on one filesystem, the lock flags: bits a core is given for each
# filesystem it meets (by the judge it is handed: _lockability.lock_flags_for), once per
# filesystem per process.  0: a local filesystem, flock alone.
SHARED = 1  # shared between machines: caches may lie, so same-file checks reopen the path
RECORD_LOCK = 2  # an open-file-description record lock (F_OFD_SETLKW) besides the flock

# The retry policy for EIO and ENOLCK from a lock call, Toil's: attempts in all, first
# pause (seconds, doubled after each failure), longest pause.
DEFAULT_RETRY_POLICY = (10, 1.0, 60.0)
# Where the environment changes it, in the policy's order: each variable, whether it holds
# a whole number (else seconds), and the largest value it may hold.
RETRY_SETTINGS = (
    ("TOIL_THREADING_LOCK_MAX_TRIES", True, 1000),
    ("TOIL_THREADING_LOCK_BACKOFF", False, 3600),
    ("TOIL_THREADING_LOCK_MAX_BACKOFF", False, 3600),
)
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
