"""Whether and how the package locks where a path or an open file lies: the readings (the
mount table through the core, the statfs(2) number) judged by toil_threading._filesystems.

`lock_flags_for` is the judge the facade hands to the cores with every operation that may
meet a new filesystem; a core asks it once per filesystem per process (never per
acquisition) and keeps the answer.  Cheap to import: what it judges with loads on first use.
"""

import os

from . import _impl
from ._protocol import WORKING_DIRECTORY

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._filesystems import FilesystemReport
    from ._mountinfo import Mount

_NODE_LOCAL_SETTING = "TOIL_THREADING_NODE_LOCAL_LOCKS"

# Filesystems (by device) already warned about as node-local, so the warning comes once.
_warned: set[int] = set()


def read_mounts(root: str = "/") -> "list[Mount] | None":
    """The mounts this process sees, in the table's order; None where the table cannot be
    read or is malformed.  With root other than "/", the table of a system captured there:
    root/proc/self/mountinfo, read beneath root with no link followed (OSError where root
    is missing or not a directory)."""
    from ._mountinfo import mounts_from

    if root.rstrip("/"):
        captured = _impl.core.Directory(root, follow=True)
        try:
            reason, lines = _impl.core.mount_table(captured.fd, "proc/self/mountinfo", "")
        finally:
            captured.close()
    else:
        reason, lines = _impl.core.mount_table(WORKING_DIRECTORY, "/proc/self/mountinfo", "")
    return None if reason else mounts_from(lines)


def filesystem_report(path: str, root: str = "/") -> "FilesystemReport":
    """The filesystem under path, its lock verdicts and the strategy taken there.

    With root other than "/", root/proc/self/mountinfo is read instead and path is matched
    lexically (it need not exist); otherwise path is resolved and must exist.
    """
    from ._filesystems import report
    from ._mountinfo import mount_of

    if root == "/":
        magic = _impl.core.fs_magic(path)  # also: FileNotFoundError for a missing path
        resolved = os.path.realpath(path)
    else:
        magic = None
        resolved = os.path.normpath(os.path.join("/", path))
    mounts = read_mounts(root)
    return report(path, mount_of(mounts, resolved) if mounts else None, magic)


def ensure_lockable(path: str, hint: str | None) -> "FilesystemReport":
    """The report on path's filesystem; RuntimeError (with hint) where the package will not
    lock there."""
    from ._filesystems import STRATEGY_REFUSED, refusal

    found = filesystem_report(path)
    if found.strategy == STRATEGY_REFUSED:
        raise refusal(path, found, hint)
    return found


def lock_flags_for(fd: int, device: int, directory: str) -> int:
    """How the cores lock on the filesystem of the open file fd (its lock flags), in
    directory (for messages).

    Refuses with RuntimeError where the package will not lock; says once per filesystem,
    as a warning, where locks exclude only within this machine
    (TOIL_THREADING_NODE_LOCAL_LOCKS=refuse makes that a RuntimeError too, =allow
    silences it).
    """
    from . import _errors, _filesystems
    from ._mountinfo import mount_of

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
    found = _filesystems.report(directory, mount, magic)
    if found.strategy == _filesystems.STRATEGY_REFUSED:
        raise _filesystems.refusal(directory, found)
    if found.strategy == _filesystems.STRATEGY_NODE_LOCAL:
        setting = os.environ.get(_NODE_LOCAL_SETTING, "warn") or "warn"
        if setting not in ("warn", "allow", "refuse"):
            raise ValueError(f"{_NODE_LOCAL_SETTING}={setting!r} is not warn, allow or refuse")
        if setting == "refuse":
            raise _filesystems.refusal(
                directory,
                found,
                f"({_NODE_LOCAL_SETTING}=refuse: locks that hold only"
                " within one machine are refused.)",
            )
        if setting == "warn" and device not in _warned:
            _warned.add(device)
            _errors.log(30, "%s: %s", directory, found.reason)
    return _filesystems.lock_flags(found)
