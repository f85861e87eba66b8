"""What the command line's `inspect` sees in a coordination directory, and who holds it.

Every file is probed as the library itself probes it (a shared non-blocking lock, let go
at once); the holders' PIDs come from /proc/locks.  Nothing is removed unless asked, and
then only what the library's own probes would remove: empty, unlocked files named like
process names or arena members.  Names and command lines are kept as the system gave
them (undecodable bytes as os.fsdecode keeps them): the command line escapes them for
whatever it prints.
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
    TABLE_FILE_BYTES,
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


class LockFile:
    """One lock file, and what probing it found."""

    __slots__ = ("command", "name", "not_removed", "path", "pid", "state")

    def __init__(
        self,
        name: str,
        path: str,
        state: str,
        pid: int | None = None,
        command: list[str] | None = None,
        not_removed: str | None = None,
    ) -> None:
        self.name = name  # the mutex name, or the file name of a member or process name
        self.path = path
        self.state = state
        self.pid = pid  # the holder, where /proc/locks shows it (this host and PID namespace)
        self.command = command
        self.not_removed = not_removed  # why cleaning left this dead file in place

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
    """The arguments process pid was started with, as far as their first TABLE_FILE_BYTES
    go (anyone may start a process with a huge command line); None if it is gone, hidden
    or a zombie."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            raw = cmdline.read(TABLE_FILE_BYTES)
    except OSError:
        return None
    return [os.fsdecode(arg) for arg in raw.rstrip(b"\0").split(b"\0")] if raw else None


def _lock_file(
    directory: "Directory",
    where: str,
    name: str,
    label: str,
    kind: str,
    state: int,
    holders: dict[tuple[int, int], int],
    not_removed: str | None = None,
) -> LockFile:
    """What was found of name in directory (shown as the folder where), labelled label."""
    pid = None
    if state == ALIVE:
        try:
            info = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
            pid = holders.get((info.st_dev, info.st_ino))
        except OSError:
            pass  # gone since: the holder let go
    command = command_line(pid) if pid else None
    return LockFile(label, f"{where}/{name}", _WORDS[kind][state], pid, command, not_removed)


def _remove_dead(directory: "Directory", name: str) -> tuple[int, str | None]:
    """Remove a dead file as the library's probe does (only an empty, unlocked one named
    like ours, while it is still the one found): its state after, and why an empty dead
    file is still there (None if it is not)."""
    try:
        state = _impl.core.probe(directory, name, True)
    except OSError as error:  # a read-only mount, an I/O error: this file only
        return DEAD, error.strerror or str(error)
    if state != DEAD:
        return state, None
    try:
        empty = os.stat(name, dir_fd=directory.fd, follow_symlinks=False).st_size == 0
    except OSError:
        return ABSENT, None  # gone since
    if not empty:
        return DEAD, None
    # The probe keeps, without a word, a dead file it may not unlink: on a read-only
    # filesystem (EROFS), or another user's in a sticky directory (EPERM, EACCES).
    if os.statvfs(directory.fd).f_flag & os.ST_RDONLY:
        return DEAD, os.strerror(errno.EROFS)
    return DEAD, "removal not permitted"


def _names_in(
    directory: "Directory",
    where: str,
    kind: str,
    clean: bool,
    holders: dict[tuple[int, int], int],
) -> list[LockFile]:
    """The process-name or member files in directory, probed; with clean, the dead are
    removed one by one, and one that cannot be says why (the others are still tried)."""
    found = []
    for name, state in sorted(_impl.core.scan(directory, False, False)):
        not_removed = None
        if clean and state == DEAD:
            state, not_removed = _remove_dead(directory, name)
        if state != ABSENT:
            found.append(
                _lock_file(directory, where, name, name, kind, state, holders, not_removed)
            )
    return found


def _absolute(path: str) -> str:
    """path made absolute to show it; as given where the working directory has no name
    (os.getcwd fails)."""
    try:
        return os.path.abspath(path)
    except OSError:
        return path


def inspect_directory(directory: str, clean: bool) -> Inspection:
    """Every mutex, arena and process name in directory, probed.

    directory is opened once, as given (a working directory deeper than PATH_MAX has no
    absolute path that can be opened); everything below it is looked at relative to that,
    and nothing is followed.  A mutex file is never removed: a free one may be open in a
    process about to lock it.
    """
    holders = exclusive_flock_holders() or {}
    base = _impl.core.Directory(directory)
    try:
        return _inspect_open(base, _absolute(directory), clean, holders)
    finally:
        base.close()


def _listing(directory: "Directory") -> list[tuple[str, bool, bool]]:
    """Each entry of directory: its name, whether it is a regular file and whether a
    directory (a link is neither), told while the listing is open."""
    try:
        listed = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=directory.fd)
    except OSError as error:  # opened to work in, but it may not be read
        raise _retry.error(error.errno or errno.EIO, directory.path) from None
    try:
        with os.scandir(listed) as listing:
            return [
                (
                    entry.name,
                    entry.is_file(follow_symlinks=False),
                    entry.is_dir(follow_symlinks=False),
                )
                for entry in listing
            ]
    finally:
        os.close(listed)


def _inspect_open(
    base: "Directory", where: str, clean: bool, holders: dict[tuple[int, int], int]
) -> Inspection:
    """Every mutex, arena and process name in the open directory base (shown as where)."""
    entries = sorted(_listing(base))
    found = Inspection(where)
    found.names = _names_in(base, where, "name", clean, holders)
    for name, is_file, _ in entries:
        if is_file and name.startswith(MUTEX_PREFIX):
            found.mutexes += _mutex_in(base, where, name, holders)
    for name, _, is_dir in entries:
        if is_dir and name.endswith(ARENA_MEMBERS_SUFFIX):
            found.arenas += _arena_in(base, where, name, clean, holders)
    return found


def _mutex_in(
    base: "Directory", where: str, filename: str, holders: dict[tuple[int, int], int]
) -> list[LockFile]:
    """The mutex whose file is filename in base, probed ([] if there is none now)."""
    state = _impl.core.probe(base, filename, False)
    if state == ABSENT:
        return []
    label = filename[len(MUTEX_PREFIX) :]
    return [_lock_file(base, where, filename, label, "mutex", state, holders)]


def _arena_in(
    base: "Directory", where: str, entry: str, clean: bool, holders: dict[tuple[int, int], int]
) -> list[Arena]:
    """The arena whose members directory is entry in base ([] if there is none now)."""
    name = entry[: -len(ARENA_MEMBERS_SUFFIX)]
    if not name:
        return []
    try:
        members = _impl.core.Directory(entry, base)
        try:
            return [Arena(name, _names_in(members, f"{where}/{entry}", "member", clean, holders))]
        finally:
            members.close()
    except FileNotFoundError:  # its last member has just cleaned it up
        return []
    except PermissionError:
        return [Arena(name, [], "unknown: permission denied")]
