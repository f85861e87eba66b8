"""Process names: like PIDs, but visible between containers that share a directory.

A name is a locked file in the base directory; it exists while its file is locked, so it
dies with its process, however that dies.  The table and its lock are Toil's public
attributes, re-exported by the facade.
"""

import _thread
import atexit
import errno
import os

from . import _checks, _errors, _impl
from ._lockability import lock_flags_for
from ._locks import exclusive_flock_holders
from ._protocol import ABSENT, ALIVE, DEAD, DENIED, SHARED

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._checks import StrPath
    from ._core_py import Directory, Held

#: Guards current_process_name_for (and the files behind it).
current_process_name_lock = _thread.allocate_lock()  # what threading.Lock() makes
#: This process's name in each base directory it has asked about.
current_process_name_for: dict[str, str] = {}
# The locked file behind each name, by base directory: it keeps the directory it was made
# in open, so the name is destroyed there whatever the working directory is by then.
_held_names: "dict[str, Held]" = {}


def _forget_names() -> None:
    """Drop every name of this process and close (never unlock) their files.

    Closing only drops this process's reference: a forked child closing its copies
    leaves the parent's locks, and so the parent's names, alive.
    """
    while _held_names:
        _held_names.popitem()[1].close()
    current_process_name_for.clear()


def _after_fork_in_child() -> None:
    # The lock may have been held by a thread that does not exist in the child.
    current_process_name_lock._at_fork_reinit()  # type: ignore[attr-defined]
    _forget_names()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def collect_process_name_garbage() -> None:
    """Forget the names whose files are gone (their directory was cleaned up).

    Caller must hold current_process_name_lock.
    """
    for base_dir in list(current_process_name_for):
        held = _held_names.get(base_dir)
        if held is None or held.gone():
            del current_process_name_for[base_dir]
            if held is not None:
                _held_names.pop(base_dir).close()


def destroy_all_process_names() -> None:
    """Delete this process's name files because the process is going away.

    Registered to run at exit.  Assumes nobody else in this process races with it.
    """
    while _held_names:
        held = _held_names.popitem()[1]
        try:
            held.release()  # in the directory it was made in; a file cleaned away is no matter
        except OSError:
            pass  # its directory is unreadable now: nothing of ours can be removed
    current_process_name_for.clear()


atexit.register(destroy_all_process_names)


def get_process_name(base_dir: "StrPath") -> str:
    """The name of this process in base_dir: like a PID, but visible across containers.

    :param base_dir: Base directory to work in. Defines the shared namespace.
    :returns: the process's name there, the same on every call from this process.
    """
    base_dir = _checks.path(base_dir)
    held = _held_names.get(base_dir)
    if held is not None and held.gone():
        with current_process_name_lock:  # its directory was cleaned up: forget it
            collect_process_name_garbage()
        held = _held_names.get(base_dir)
    if held is None:
        # No lock is held while a name is made (an interrupt there would leave it held):
        # threads racing here store one name, the first, and a loser lets its file go.
        made = _impl.core.Held(_impl.core.Directory(base_dir), lock_flags_for)
        held = _held_names.setdefault(base_dir, made)
        if held is not made:
            made.release()
    current_process_name_for[base_dir] = held.name
    return held.name


def process_name_exists(base_dir: "StrPath", name: str) -> bool:
    """True if the process named name (from get_process_name) in base_dir is alive.

    Sees across container boundaries that share base_dir.  A dead process's name file
    is removed.
    """
    base_dir = _checks.path(base_dir)
    _checks.name(name, "process name", 0)
    directory = _impl.core.Directory(base_dir)
    try:
        state = _impl.core.probe(directory, name, True, lock_flags_for)
        if state == DENIED:
            # Another user's file, which only its owner can open: /proc/locks tells.
            state = judge_unopenable(directory, name)
        return state == ALIVE
    finally:
        directory.close()


def judge_unopenable(directory: "Directory", name: str) -> int:
    """ALIVE or DEAD for a name or member file in directory that this process may not open
    (another user's, mode 0600), from the flocks /proc/locks shows; ABSENT if it is gone.

    Only its owner (or root) can have opened it to lock it, so a lock on it is its owner's.
    /proc/locks shows the locks of this machine only: on a filesystem shared between
    machines whether the owner lives cannot be told, and PermissionError says so.
    """
    shown = f"{directory.path}/{name}"
    try:
        info = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
    except FileNotFoundError:
        return ABSENT
    holders = None
    if not _impl.core.lock_flags(directory.fd, directory.path, lock_flags_for) & SHARED:
        holders = exclusive_flock_holders()
    if holders is None:
        raise _errors.error(errno.EACCES, shown)
    return ALIVE if (info.st_dev, info.st_ino) in holders else DEAD
