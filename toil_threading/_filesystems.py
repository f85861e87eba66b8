"""What each filesystem's locks do between machines, and how the package locks there.

The one home of the package's knowledge of filesystems: the table (each filesystem, the
mount options that change it, whether flock(2) and POSIX record locks exclude between
machines there, and why; the docs' filesystem matrix gives the source behind each row),
the strategy that follows, the lock flags the cores are given for it, and the words for
people.  It reads nothing itself: toil_threading._lockability brings it the readings (the
mount holding a path, the statfs(2) number).  Loaded on first use.
"""

import errno
import os
import sys

from ._mountinfo import Mount
from ._protocol import RECORD_LOCK, SHARED

# Verdicts on a kind of lock (flock, or POSIX record locks) on one filesystem.
LOCAL = "local"  # a filesystem of this machine only
CLUSTER = "cluster"  # shared, and this kind of lock excludes across machines
NODE = "node"  # shared, but this kind of lock excludes only within one machine
REFUSED = "refused"  # this package will not lock there
UNKNOWN = "unknown"  # shared or possibly shared; behaviour across machines not known

# One row per filesystem: the name shown to people, its types as /proc/self/mountinfo
# names them, its statfs(2) f_type numbers (for systems without mountinfo), the verdict
# on flock and on record locks as commonly mounted, and why.  The docs' filesystem
# matrix gives the source behind each row.
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

# What global_mutex, the arena and process names do on a filesystem: its strategy.
STRATEGY_FLOCK = "flock"  # flock alone, as Toil does
STRATEGY_FLOCK_AND_RECORD = "flock+ofd"  # flock, then a whole-file OFD record lock as well
STRATEGY_NODE_LOCAL = "node-local"  # flock alone, excluding only within this machine (warned)
STRATEGY_REFUSED = "refused"  # no lock is taken: RuntimeError

# What each strategy means, for people.
_STRATEGY_WORDS = {
    STRATEGY_FLOCK: "flock alone excludes every process that can see the directory",
    STRATEGY_FLOCK_AND_RECORD: "an open-file-description record lock is taken after the flock,"
    " so exclusion holds across machines while Toil's processes on this machine still exclude"
    " through the flock",
    STRATEGY_NODE_LOCAL: "no kind of lock excludes between machines here: exclusion holds only"
    " among the processes of this machine",
    STRATEGY_REFUSED: "this package will not lock here",
}

# Open-file-description record locks exist on Linux only (F_OFD_SETLK, 3.15 and later).
RECORD_LOCKS = sys.platform.startswith("linux")

# What a lock call's errno usually means, said when the package gives up on it.
LOCK_ERROR_HINTS = {
    errno.ENOLCK: "ENOLCK usually means an NFS mount without a working lock daemon (lockd)",
    errno.EIO: "EIO from flock is typical of a Ceph MDS in trouble; Ceph is not safe for locks",
}


class FilesystemReport:
    """What filesystem_report found for a path: the mount, the verdicts, the strategy.

    ``type``, ``mount_point``, ``root``, ``source`` and ``options`` describe the mount
    holding the path as /proc/self/mountinfo names it (None where there is no mountinfo);
    ``filesystem`` is the name shown to people and ``magic`` the statfs(2) number;
    ``flock`` and ``posix`` say whether each kind of lock excludes between machines
    ("local", "cluster", "node", "refused" or "unknown"); ``strategy`` is what the package
    does there and ``reason`` why, in one sentence.
    """

    __slots__ = ("filesystem", "flock", "magic", "mount", "path", "posix", "reason", "strategy")
    FIELDS = (
        "path",
        "type",
        "filesystem",
        "mount_point",
        "root",
        "source",
        "options",
        "magic",
        "flock",
        "posix",
        "strategy",
        "reason",
    )

    def __init__(
        self, path: str, mount: Mount | None, magic: str | None, verdicts: tuple[str, str, str, str]
    ) -> None:
        self.path, self.mount, self.magic = path, mount, magic
        self.filesystem, self.flock, self.posix, why = verdicts
        self.strategy = strategy_of(self.flock, self.posix)
        self.reason = f"{why}: {_STRATEGY_WORDS[self.strategy]}"

    @property
    def type(self) -> str:
        return self.mount.type if self.mount else self.filesystem

    @property
    def mount_point(self) -> str | None:
        return self.mount.mount_point if self.mount else None

    @property
    def root(self) -> str | None:
        return self.mount.root if self.mount else None

    @property
    def source(self) -> str | None:
        return self.mount.source if self.mount else None

    @property
    def options(self) -> str:
        return self.mount.options if self.mount else ""

    def as_dict(self) -> dict[str, str | None]:
        return {name: getattr(self, name) for name in self.FIELDS}

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.FIELDS)
        return f"FilesystemReport({fields})"


_VERDICTS_SETTING = "TOIL_THREADING_LOCK_VERDICTS"
_VERDICT_WORDS = (LOCAL, CLUSTER, NODE, REFUSED, UNKNOWN)


def _site_verdicts() -> dict[str, tuple[str, str]]:
    """What the site says of some mount types: TOIL_THREADING_LOCK_VERDICTS, a comma-
    separated list of TYPE=FLOCK/POSIX (for example fuse.juicefs=cluster/cluster)."""
    text = os.environ.get(_VERDICTS_SETTING, "")
    found = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        mount_type, _, pair = item.partition("=")
        flock, _, posix = pair.partition("/")
        if not mount_type or flock not in _VERDICT_WORDS or posix not in _VERDICT_WORDS:
            raise ValueError(
                f"{_VERDICTS_SETTING}: {item!r} is not TYPE=FLOCK/POSIX with each of"
                f" {', '.join(_VERDICT_WORDS)}"
            )
        found[mount_type] = (flock, posix)
    return found


def verdicts(mount_type: str, options: str, major: int) -> tuple[str, str, str, str]:
    """(name, flock, posix, why) for a mount: what the site says of its type, else its
    type's row, changed by its options."""
    site = _site_verdicts().get(mount_type)
    if site is not None:
        return mount_type, site[0], site[1], f"as {_VERDICTS_SETTING} says of {mount_type}"
    row = _row_of_type(mount_type)
    if row is None:
        flock, posix, why = UNLISTED_ON_A_DISK if major != 0 else UNLISTED_ELSEWHERE
        return mount_type, flock, posix, why
    name = row[0]
    present = set(options.split(","))
    for types, option, flock, posix, why in OPTION_RULES:
        if mount_type in types and option in present:
            return name, flock, posix, why
    return row


def strategy_of(flock: str, posix: str) -> str:
    """What the package does on a filesystem with these verdicts."""
    if REFUSED in (flock, posix):
        return STRATEGY_REFUSED
    if flock in (LOCAL, CLUSTER):
        return STRATEGY_FLOCK
    if flock == NODE and posix in (NODE, LOCAL):
        return STRATEGY_NODE_LOCAL
    return STRATEGY_FLOCK_AND_RECORD


def lock_flags(found: FilesystemReport) -> int:
    """The lock flags (_protocol's bits) the cores are given for a filesystem: SHARED
    unless it is local; RECORD_LOCK where its strategy takes a record lock too."""
    flags = 0 if found.flock == LOCAL else SHARED
    if found.strategy == STRATEGY_FLOCK_AND_RECORD and RECORD_LOCKS:
        flags |= RECORD_LOCK
    return flags


def across_machines(found: FilesystemReport) -> str:
    """Whether the locks the package takes under found's path exclude across machines:
    the best verdict among the kinds of lock its strategy takes."""
    if found.strategy == STRATEGY_REFUSED:
        return "refused"
    taken = {found.flock}
    if found.strategy == STRATEGY_FLOCK_AND_RECORD:
        taken.add(found.posix)
    for verdict, answer in ((CLUSTER, "yes"), (LOCAL, "local"), (UNKNOWN, "unknown")):
        if verdict in taken:
            return answer
    return "no"


# What each answer of across_machines means, for people.
ACROSS_MACHINES_WORDS = {
    "yes": "yes: the locks taken there exclude across machines",
    "no": "no: the locks exclude only among the processes of this machine",
    "unknown": "unknown: how this filesystem's locks behave across machines is not known",
    "local": "no other machine sees it: a filesystem of this machine only",
    "refused": "no: the package will not lock there",
}


def report(path: str, mount: Mount | None, magic: int | None) -> FilesystemReport:
    """The report on path, from the mount holding it and its statfs(2) number (each None
    where it could not be read)."""
    by_magic = None if magic is None else _row_of_magic(magic)
    if mount is not None:
        found = verdicts(mount.type, mount.options, mount.device[0])
    else:
        found = by_magic or (
            "unknown",
            UNKNOWN,
            UNKNOWN,
            "a filesystem this package cannot identify here",
        )
    if by_magic is not None and REFUSED in by_magic[1:3]:
        found = by_magic  # a statfs number the table refuses (Ceph's) decides, whatever else
    return FilesystemReport(
        path, mount, None if magic is None else f"0x{magic & 0xFFFFFFFF:08x}", found
    )


def _row_of_type(mount_type: str) -> tuple[str, str, str, str] | None:
    """(name, flock, posix, why) for a mount type of the table, None if unlisted."""
    for name, types, _magics, flock, posix, why in FILESYSTEMS:
        if mount_type in types:
            return name, flock, posix, why
    return None


def _row_of_magic(magic: int) -> tuple[str, str, str, str] | None:
    for name, _types, magics, flock, posix, why in FILESYSTEMS:
        if magic & 0xFFFFFFFF in magics:
            return name, flock, posix, why
    return None


def refusal(directory: str, found: FilesystemReport, hint: str | None = None) -> RuntimeError:
    """The error for a directory on a filesystem where the package will not lock."""
    message = (
        f"Refusing to lock under {directory}: {found.filesystem}"
        f" ({found.type}): {found.reason.split(':')[0]}."
    )
    if hint is None:
        hint = (
            "Use a directory on a local disk or tmpfs for the locks, or one on NFS, GlusterFS,"
            " GPFS or Lustre (mounted flock)."
        )
    return RuntimeError(f"{message} {hint}")
