"""Process names: like PIDs, but visible between containers that share a directory.

A name is a locked file in the base directory; it exists while its file is locked, so it
dies with its process, however that dies.  The table and its lock are Toil's public
attributes, re-exported by the facade.
"""

import _thread
import atexit
import errno
import os

from . import _checks, _impl, _retry
from ._protocol import ALIVE, DENIED

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._checks import StrPath

#: Guards current_process_name_for (and the descriptors behind it).
current_process_name_lock = _thread.allocate_lock()  # what threading.Lock() makes
#: This process's name in each base directory it has asked about.
current_process_name_for: dict[str, str] = {}
# The locked descriptor behind each name, by base directory.
_name_fds: dict[str, int] = {}


def _forget_names() -> None:
    """Drop every name of this process and close (never unlock) their descriptors.

    Closing only drops this process's reference: a forked child closing its copies
    leaves the parent's locks, and so the parent's names, alive.
    """
    for fd in _name_fds.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _name_fds.clear()
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
        fd = _name_fds.get(base_dir, -1)
        try:
            gone = fd < 0 or os.fstat(fd).st_nlink == 0
        except OSError:  # ESTALE: gone on the server
            gone = True
        if gone:
            del current_process_name_for[base_dir]
            if _name_fds.pop(base_dir, -1) >= 0:
                os.close(fd)


def destroy_all_process_names() -> None:
    """Delete this process's name files because the process is going away.

    Registered to run at exit.  Assumes nobody else in this process races with it.
    """
    collect_process_name_garbage()  # names whose directory was cleaned up: nothing to remove
    for base_dir, name in list(current_process_name_for.items()):
        fd = _name_fds.pop(base_dir, -1)
        if fd >= 0:
            try:
                _impl.core.release(fd, base_dir, name)
            except OSError:
                pass  # its directory is unreadable now: nothing of ours can be removed
    _forget_names()


atexit.register(destroy_all_process_names)


def get_process_name(base_dir: "StrPath") -> str:
    """The name of this process in base_dir: like a PID, but visible across containers.

    :param base_dir: Base directory to work in. Defines the shared namespace.
    :returns: the process's name there, the same on every call from this process.
    """
    base_dir = _checks.directory(base_dir)
    with current_process_name_lock:
        collect_process_name_garbage()
        name = current_process_name_for.get(base_dir)
        if name is None:
            fd, name = _impl.core.claim_name(base_dir)
            _name_fds[base_dir] = fd
            current_process_name_for[base_dir] = name
        return name


def process_name_exists(base_dir: "StrPath", name: str) -> bool:
    """True if the process named name (from get_process_name) in base_dir is alive.

    Sees across container boundaries that share base_dir.  A dead process's name file
    is removed.
    """
    base_dir = _checks.directory(base_dir)
    _checks.name(name, "process name", 0)
    state = _impl.core.probe(base_dir, name, True)
    if state == DENIED:
        # Another user's file we may not open: whether its owner lives cannot be told.
        raise _retry.error(errno.EACCES, os.path.join(base_dir, name))
    return state == ALIVE
