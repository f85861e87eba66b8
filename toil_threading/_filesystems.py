"""Which filesystem holds a path, what its locks do between machines, and how to lock there.

The answer comes from the mount that holds the path in /proc/self/mountinfo (its type and
options), read against the table in toil_threading._protocol, with the statfs(2) number
where there is no mountinfo.  The cores ask `strategy_for` once per filesystem per
process (never per acquisition); `filesystem_report` answers people and the command line.
Loaded on first use: nothing here is needed to import the package.
"""

from __future__ import annotations

import os
import sys

from . import _impl, _retry
from ._mountinfo import Mount, mount_of, read_mounts
from ._protocol import (
    CLUSTER,
    FILESYSTEMS,
    LOCAL,
    NODE,
    OPTION_RULES,
    RECORD_LOCK,
    REFUSED,
    SHARED,
    UNKNOWN,
    UNLISTED_ELSEWHERE,
    UNLISTED_ON_A_DISK,
)

# What global_mutex, the arena and process names do on a filesystem.
FLOCK = "flock"  # flock alone, as Toil does
FLOCK_AND_RECORD = "flock+ofd"  # flock, then a whole-file OFD record lock as well
NODE_LOCAL = "node-local"  # flock alone, excluding only within this machine (warned once)
REFUSE = "refused"  # no lock is taken: RuntimeError

# What each strategy means, for people.
_STRATEGY_WORDS = {
    FLOCK: "flock alone excludes every process that can see the directory",
    FLOCK_AND_RECORD: "an open-file-description record lock is taken after the flock, so"
    " exclusion holds across machines while Toil's processes on this machine still exclude"
    " through the flock",
    NODE_LOCAL: "no kind of lock excludes between machines here: exclusion holds only among"
    " the processes of this machine",
    REFUSE: "this package will not lock here",
}

_NODE_LOCAL_SETTING = "TOIL_THREADING_NODE_LOCAL_LOCKS"


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
        return REFUSE
    if flock in (LOCAL, CLUSTER):
        return FLOCK
    if flock == NODE and posix in (NODE, LOCAL):
        return NODE_LOCAL
    return FLOCK_AND_RECORD


def _report(path: str, mount: Mount | None, magic: int | None) -> FilesystemReport:
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


def filesystem_report(path: str, root: str = "/") -> FilesystemReport:
    """The filesystem under path, its lock verdicts and the strategy taken there.

    With root other than "/", root/proc/self/mountinfo is read instead and path is matched
    lexically (it need not exist); otherwise path is resolved and must exist.
    """
    if root == "/":
        magic = _impl.core.fs_magic(path)  # also: FileNotFoundError for a missing path
        resolved = os.path.realpath(path)
    else:
        magic = None
        resolved = os.path.normpath(os.path.join("/", path))
    mounts = read_mounts(root)
    mount = mount_of(mounts, resolved) if mounts else None
    return _report(path, mount, magic)


def refusal(directory: str, report: FilesystemReport, hint: str | None = None) -> RuntimeError:
    """The error for a directory on a filesystem where the package will not lock."""
    message = (
        f"Refusing to lock under {directory}: {report.filesystem}"
        f" ({report.type}): {report.reason.split(':')[0]}."
    )
    if hint is None:
        hint = (
            "Use a directory on a local disk or tmpfs for the locks, or one on NFS, GlusterFS,"
            " GPFS or Lustre (mounted flock)."
        )
    return RuntimeError(f"{message} {hint}")


# Filesystems (by device) already warned about as node-local, so the warning comes once.
_warned: set[int] = set()


def strategy_for(fd: int, device: int, directory: str) -> int:
    """How the cores lock on the filesystem of the open file fd (the strategy bits).

    Called by a core the first time it meets a filesystem (its device).  Refuses with
    RuntimeError where the package will not lock; says once per filesystem, as a
    warning, where locks exclude only within this machine (TOIL_THREADING_NODE_LOCAL_LOCKS
    =refuse makes that a RuntimeError too, =allow silences it).
    """
    try:
        magic = _impl.core.fs_magic(fd)
    except OSError:  # a file another client has just removed (ESTALE): ask of its directory
        magic = _impl.core.fs_magic(directory)
    mounts = read_mounts()
    mount = None
    if mounts:
        # The kernel's name for the open file: read, never resolved again (the path given
        # may have been changed to lead elsewhere since it was opened).
        try:
            where = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            where = ""  # the mounts of its device alone decide
        mount = mount_of(mounts, where, (os.major(device), os.minor(device)))
    report = _report(directory, mount, magic)
    if report.strategy == REFUSE:
        raise refusal(directory, report)
    if report.strategy == NODE_LOCAL:
        setting = os.environ.get(_NODE_LOCAL_SETTING, "warn") or "warn"
        if setting not in ("warn", "allow", "refuse"):
            raise ValueError(f"{_NODE_LOCAL_SETTING}={setting!r} is not warn, allow or refuse")
        if setting == "refuse":
            raise refusal(
                directory,
                report,
                f"({_NODE_LOCAL_SETTING}=refuse: locks that hold only"
                " within one machine are refused.)",
            )
        if setting == "warn" and device not in _warned:
            _warned.add(device)
            _retry.log(30, "%s: %s", directory, report.reason)
    bits = 0 if report.flock == LOCAL else SHARED
    if report.strategy == FLOCK_AND_RECORD and sys.platform.startswith("linux"):
        bits |= RECORD_LOCK
    return bits
