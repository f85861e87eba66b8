"""What the command line's `inspect` sees in a coordination directory, and who holds it.

Every file is probed as the library itself probes it (a shared non-blocking lock, let go
at once); the holders' PIDs come from /proc/locks.  Nothing is removed unless asked, and
then only what the library's own probes would remove: empty, unlocked files named like
process names or arena members.
"""

from __future__ import annotations

import os

from . import _impl
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


def exclusive_flock_holders() -> dict[tuple[int, int], int]:
    """The PID holding each exclusive flock on this host, by (st_dev, st_ino).

    From /proc/locks, whose lines read "1: FLOCK  ADVISORY  WRITE 12345 00:1a:67890 0
    EOF" (major and minor in hex, then the inode); a waiter's line has "->" after the
    number and is skipped.  Only exclusive locks count: the library's holders always lock
    exclusively, and a shared lock is another inspector's passing probe.  A PID of 0 is
    a process outside our PID namespace.
    """
    try:
        with open("/proc/locks") as locks:
            lines = locks.read().splitlines()
    except OSError:  # no /proc here: no PIDs to show
        return {}
    holders = {}
    for line in lines:
        fields = line.split()
        if fields[1:2] == ["FLOCK"] and fields[3:4] == ["WRITE"] and int(fields[4]) > 0:
            major, minor, inode = fields[5].split(":")
            holders[(os.makedev(int(major, 16), int(minor, 16)), int(inode))] = int(fields[4])
    return holders


def command_line(pid: int) -> list[str] | None:
    """The arguments process pid was started with; None if it is gone, hidden or a zombie."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            raw = cmdline.read()
    except OSError:
        return None
    return [shown(os.fsdecode(arg)) for arg in raw.rstrip(b"\0").split(b"\0")] if raw else None


def _lock_file(
    directory: str,
    name: str,
    label: str,
    kind: str,
    state: int,
    holders: dict[tuple[int, int], int],
) -> LockFile:
    path = os.path.join(directory, name)
    pid = None
    if state == ALIVE:
        try:
            info = os.stat(path, follow_symlinks=False)
            pid = holders.get((info.st_dev, info.st_ino))
        except OSError:
            pass  # gone since: the holder let go
    return LockFile(
        shown(label), shown(path), _WORDS[kind][state], pid, command_line(pid) if pid else None
    )


def _names_in(
    directory: str, kind: str, clean: bool, holders: dict[tuple[int, int], int]
) -> list[LockFile]:
    """The process-name or member files in directory, probed (and with clean, the dead
    removed)."""
    return [
        _lock_file(directory, name, name, kind, state, holders)
        for name, state in sorted(_impl.core.scan(directory, clean))
    ]


def inspect_directory(directory: str, clean: bool) -> Inspection:
    """Every mutex, arena and process name in directory, probed.

    directory is resolved first; below it nothing is followed.  A mutex file is never
    removed: a free one may be open in a process about to lock it.
    """
    directory = os.path.realpath(directory)
    holders = exclusive_flock_holders()
    with os.scandir(directory) as listing:
        entries = sorted(listing, key=lambda entry: entry.name)
    found = Inspection(directory)
    found.names = _names_in(directory, "name", clean, holders)
    for entry in entries:
        if entry.name.startswith(MUTEX_PREFIX) and entry.is_file(follow_symlinks=False):
            state = _impl.core.probe(directory, entry.name, False)
            if state != ABSENT:
                label = entry.name[len(MUTEX_PREFIX) :]
                found.mutexes.append(
                    _lock_file(directory, entry.name, label, "mutex", state, holders)
                )
        elif entry.name.endswith(ARENA_MEMBERS_SUFFIX) and entry.is_dir(follow_symlinks=False):
            name = entry.name[: -len(ARENA_MEMBERS_SUFFIX)]
            if not name:
                continue
            try:
                members = _names_in(entry.path, "member", clean, holders)
            except FileNotFoundError:  # its last member has just cleaned it up
                continue
            except PermissionError:
                found.arenas.append(Arena(shown(name), [], "unknown: permission denied"))
                continue
            found.arenas.append(Arena(shown(name), members))
    return found
