"""What the command line's `inspect` sees in a coordination directory, and who holds it.

Every file is probed as the library itself probes it (a shared non-blocking lock, let go
at once); the holders' PIDs come from /proc/locks.  Nothing is removed unless asked, and
then only what the library's own probes would remove: empty, unlocked files named like
process names or arena members.
"""

import errno
import os

from . import _impl, _retry
from ._locks import exclusive_flock_holders
from ._protocol import (
    ABSENT,
    ALIVE,
    ARENA_MEMBERS_SUFFIX,
    ARENA_MUTEX_SUFFIX,
    DEAD,
    DENIED,
    MUTEX_PREFIX,
    REMOVED,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._core_py import Directory

# What a probe's answer is called, by kind of file.
_WORDS = {
    "mutex": {ALIVE: "held", DEAD: "free", DENIED: "unknown: permission denied"},
    "member": {
        ALIVE: "alive",
        DEAD: "dead",
        REMOVED: "removed",
        DENIED: "unknown: permission denied",
    },
}
_WORDS["name"] = _WORDS["member"]
HELD_STATES = ("held", "alive")
MEMBER_STATES = ("alive", "dead", "removed", "unknown: permission denied")


def shown(name: str) -> str:
    """A file name as text anyone can print: bytes that are not UTF-8 appear as \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class LockFile:
    """One lock file, and what probing it found."""

    __slots__ = ("command", "name", "path", "pid", "state")

    def __init__(
        self,
        name: str,
        path: str,
        state: str,
        pid: int | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.name = name  # the mutex name, or the file name of a member or process name
        self.path = path
        self.state = state
        self.pid = pid  # the holder, where /proc/locks shows it (this host and PID namespace)
        self.command = command

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}


class Arena:
    __slots__ = ("members", "mutex", "name", "state")

    def __init__(self, name: str, members: list[LockFile], state: str = "") -> None:
        self.name = name
        self.mutex = name + ARENA_MUTEX_SUFFIX
        self.members = members
        self.state = state  # "" where the members could be listed, else why not

    def count(self, state: str) -> int:
        return sum(member.state == state for member in self.members)


class Inspection:
    __slots__ = ("arenas", "directory", "mutexes", "names")

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.mutexes: list[LockFile] = []
        self.arenas: list[Arena] = []
        self.names: list[LockFile] = []

    def files(self) -> list[LockFile]:
        members = [member for arena in self.arenas for member in arena.members]
        return [*self.mutexes, *members, *self.names]

    @property
    def held(self) -> bool:
        return any(found.state in HELD_STATES for found in self.files())


def command_line(pid: int) -> list[str] | None:
    """The arguments process pid was started with; None if it is gone, hidden or a zombie."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            raw = cmdline.read()
    except OSError:
        return None
    return [shown(os.fsdecode(arg)) for arg in raw.rstrip(b"\0").split(b"\0")] if raw else None


def _lock_file(
    directory: "Directory",
    name: str,
    label: str,
    kind: str,
    state: int,
    holders: dict[tuple[int, int], int],
) -> LockFile:
    pid = None
    if state == ALIVE:
        try:
            info = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
            pid = holders.get((info.st_dev, info.st_ino))
        except OSError:
            pass  # gone since: the holder let go
    path = f"{directory.path}/{name}"
    return LockFile(
        shown(label), shown(path), _WORDS[kind][state], pid, command_line(pid) if pid else None
    )


def _names_in(
    directory: "Directory", kind: str, clean: bool, holders: dict[tuple[int, int], int]
) -> list[LockFile]:
    """The process-name or member files in directory, probed (and with clean, the dead
    removed)."""
    return [
        _lock_file(directory, name, name, kind, state, holders)
        for name, state in sorted(_impl.core.scan(directory, clean, False))
    ]


def inspect_directory(directory: str, clean: bool) -> Inspection:
    """Every mutex, arena and process name in directory, probed.

    directory is opened once; everything below it is looked at relative to that, and
    nothing is followed.  A mutex file is never removed: a free one may be open in a
    process about to lock it.
    """
    holders = exclusive_flock_holders() or {}
    base = _impl.core.Directory(os.path.abspath(directory))
    try:
        try:
            listed = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=base.fd)
        except OSError as error:  # opened to work in, but it may not be read
            raise _retry.error(error.errno or errno.EIO, base.path) from None
        try:
            with os.scandir(listed) as listing:
                mutexes, arenas = [], []
                for entry in listing:
                    if entry.name.startswith(MUTEX_PREFIX) and entry.is_file(follow_symlinks=False):
                        mutexes.append(entry.name)
                    elif entry.name.endswith(ARENA_MEMBERS_SUFFIX) and entry.is_dir(
                        follow_symlinks=False
                    ):
                        arenas.append(entry.name)
        finally:
            os.close(listed)
        found = Inspection(base.path)
        found.names = _names_in(base, "name", clean, holders)
        for name in sorted(mutexes):
            state = _impl.core.probe(base, name, False)
            if state != ABSENT:
                label = name[len(MUTEX_PREFIX) :]
                found.mutexes.append(_lock_file(base, name, label, "mutex", state, holders))
        for name in sorted(arenas):
            found.arenas.extend(_arena_in(base, name, clean, holders))
    finally:
        base.close()
    return found


def _arena_in(
    base: "Directory", entry: str, clean: bool, holders: dict[tuple[int, int], int]
) -> list[Arena]:
    """The arena whose members directory is entry in base ([] if there is none now)."""
    name = entry[: -len(ARENA_MEMBERS_SUFFIX)]
    if not name:
        return []
    try:
        members = _impl.core.Directory(entry, base)
        try:
            return [Arena(shown(name), _names_in(members, "member", clean, holders))]
        finally:
            members.close()
    except FileNotFoundError:  # its last member has just cleaned it up
        return []
    except PermissionError:
        return [Arena(shown(name), [], "unknown: permission denied")]
