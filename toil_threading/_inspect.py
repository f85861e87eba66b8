"""What the command line's `inspect` sees in a coordination directory, and who holds it.

Every file is probed as the library itself probes it (a shared non-blocking lock, let go
at once); the holders' PIDs come from /proc/locks.  Nothing is removed unless asked, and
then only what the library's own probes would remove: empty, unlocked files named like
process names or arena members.  Names and command lines are kept as the system gave
them (undecodable bytes as os.fsdecode keeps them): the command line escapes them for
whatever it prints.

It also finds the coordination directories of the Toil workflows on this node, where
Toil 9.6 puts them, and looks at them the same way (see inspect_toil).
"""

import errno
import os
import re

from . import _errors, _impl
from ._lockability import lock_flags_for
from ._locks import exclusive_flock_holders
from ._protocol import (
    ABSENT,
    ALIVE,
    ARENA_MEMBERS_SUFFIX,
    ARENA_MUTEX_SUFFIX,
    DEAD,
    DENIED,
    MUTEX_PREFIX,
    NAME_CHARACTERS,
    NAME_LENGTH,
    REMOVED,
    TABLE_FILE_BYTES,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._core_py import Directory

# Where Toil 9.6 keeps a workflow's lock files on a node (read in its source):
# - toil/common.py, Toil.get_toil_coordination_dir(): the coordination directory is the
#   first of TOIL_COORDINATION_DIR_OVERRIDE, --coordinationDir, TOIL_COORDINATION_DIR,
#   $XDG_RUNTIME_DIR/toil (unless SLURM_JOBID is set), /run/lock, tempfile.gettempdir()
#   (TMPDIR, TEMP, TMP, /tmp, /var/tmp, /usr/tmp) and the work directory
#   (Toil.getToilWorkDir(): TOIL_WORKDIR_OVERRIDE, --workDir, TOIL_WORKDIR) that exists
#   or can be made, is writable and is on a filesystem of at least 100 MiB (toil/lib/io.py,
#   try_path()).
# - toil/common.py, Toil.get_local_workflow_coordination_dir(): in it, one directory per
#   workflow and node, named by Toil.get_workflow_path_component(): "toilwf-" and 32 hex
#   digits.  The file stores (toil/fileStores/) keep their jobs' process names there.
# - toil/deferred.py, DeferredFunctionManager, made in that directory by toil/worker.py,
#   workerScript(): each worker holds a file "deferred/func" + 8 mkstemp letters (".tmp"
#   after it until it is locked); a dead worker's file waits for the next worker to run it.
# - toil/batchSystems/cleanup_support.py, WorkerCleanupContext: batch systems that clean a
#   node after its last worker hold the arena "toilwf-...-cleanup" in the coordination
#   directory itself (beside the workflows' directories).
TOIL_WORKFLOW = re.compile(r"toilwf-[0-9a-f]{32}")
TOIL_CLEANUP_ARENA = "-cleanup"
TOIL_DEFERRED = "deferred"
TOIL_DEFERRED_FILE = re.compile(rf"func[{re.escape(NAME_CHARACTERS)}]{{{NAME_LENGTH}}}(\.tmp)?")

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
        state = _impl.core.probe(directory, name, True, lock_flags_for)
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
    for name, state in sorted(_impl.core.scan(directory, False, False, lock_flags_for)):
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
        raise _errors.error(error.errno or errno.EIO, directory.path) from None
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
    state = _impl.core.probe(base, filename, False, lock_flags_for)
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


class ToilWorkflow:
    """One Toil workflow's coordination directory, its deferred-function files and its
    cleanup arena (which lives beside the directory), probed."""

    __slots__ = ("cleanup", "coordination", "deferred", "deferred_state", "name", "state")

    def __init__(self, place: str, name: str) -> None:
        self.name = name  # "toilwf-" and 32 hex digits, as Toil names it
        self.coordination = Inspection(f"{place}/{name}")
        self.cleanup = Inspection(place)  # the workflow's cleanup arena and its mutex only
        self.deferred: list[LockFile] = []
        self.state = ""  # "" where the directory could be looked in, else why not
        self.deferred_state = ""  # the same for its deferred-function directory

    @property
    def held(self) -> bool:
        return (
            self.coordination.held
            or self.cleanup.held
            or any(found.state in HELD_STATES for found in self.deferred)
        )


class ToilPlace:
    """A directory where Toil may have put workflows' coordination directories."""

    __slots__ = ("path", "source", "state", "workflows")

    def __init__(self, path: str, source: str) -> None:
        self.path = path
        self.source = source  # the variable or argument that named it, or "default"
        self.state = ""  # "" where it could be looked in, else why not
        self.workflows: list[ToilWorkflow] = []

    @property
    def held(self) -> bool:
        return any(workflow.held for workflow in self.workflows)


def toil_places(work_dir: str | None, environ: "Mapping[str, str]") -> list[tuple[str, str]]:
    """Where Toil 9.6 may put coordination directories, in the order it tries them (see
    TOIL_WORKFLOW), each with what named it: work_dir is Toil's --workDir, if known.

    Toil takes the first that suits it; another workflow, started with another
    environment, may have taken another: all of them are looked in.
    """
    named = [
        ("TOIL_COORDINATION_DIR_OVERRIDE", environ.get("TOIL_COORDINATION_DIR_OVERRIDE")),
        ("TOIL_COORDINATION_DIR", environ.get("TOIL_COORDINATION_DIR")),
    ]
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime and "SLURM_JOBID" not in environ:
        named.append(("XDG_RUNTIME_DIR", os.path.join(runtime, "toil")))
    named.append(("default", "/run/lock"))
    named += [(variable, environ.get(variable)) for variable in ("TMPDIR", "TEMP", "TMP")]
    named += [("default", path) for path in ("/tmp", "/var/tmp", "/usr/tmp")]
    named += [
        ("TOIL_WORKDIR_OVERRIDE", environ.get("TOIL_WORKDIR_OVERRIDE")),
        ("WORKDIR", work_dir),
        ("TOIL_WORKDIR", environ.get("TOIL_WORKDIR")),
    ]
    return [(path, source) for source, path in named if path]


def _why_not(error: OSError) -> str:
    """Why a directory could not be looked in, in the words a probe's answer uses."""
    if isinstance(error, PermissionError):
        return _WORDS["name"][DENIED]
    return error.strerror or str(error)


def inspect_toil(work_dir: str | None, environ: "Mapping[str, str]") -> list[ToilPlace]:
    """The Toil workflows of this node in every place of toil_places(), probed.

    A place that does not exist is left out, and one met before under another name is
    looked in once; one that cannot be looked in (another user's) says why, as does a
    workflow's directory.  Nothing is removed, and nothing is followed below a place.
    """
    holders = exclusive_flock_holders() or {}
    places = []
    seen = set()
    for path, source in toil_places(work_dir, environ):
        place = ToilPlace(_absolute(path), source)
        try:
            directory = _impl.core.Directory(path)
        except FileNotFoundError:
            continue  # Toil would have made it: no workflow went there
        except OSError as error:
            place.state = _why_not(error)
            places.append(place)
            continue
        try:
            info = os.fstat(directory.fd)
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            place.workflows = _toil_workflows(directory, place.path, holders)
        except OSError as error:
            place.state = _why_not(error)
        finally:
            directory.close()
        places.append(place)
    return places


def _toil_workflows(
    place: "Directory", where: str, holders: dict[tuple[int, int], int]
) -> list[ToilWorkflow]:
    """The workflows with a directory or a cleanup arena in place (shown as where)."""
    cleanup_members = TOIL_CLEANUP_ARENA + ARENA_MEMBERS_SUFFIX
    names = {
        name.removesuffix(cleanup_members)
        for name, _, is_dir in _listing(place)
        if is_dir and TOIL_WORKFLOW.fullmatch(name.removesuffix(cleanup_members))
    }
    return [_toil_workflow(place, where, name, holders) for name in sorted(names)]


def _toil_workflow(
    place: "Directory", where: str, name: str, holders: dict[tuple[int, int], int]
) -> ToilWorkflow:
    workflow = ToilWorkflow(where, name)
    arena = name + TOIL_CLEANUP_ARENA
    try:
        workflow.cleanup.mutexes = _mutex_in(
            place, where, MUTEX_PREFIX + arena + ARENA_MUTEX_SUFFIX, holders
        )
        workflow.cleanup.arenas = _arena_in(
            place, where, arena + ARENA_MEMBERS_SUFFIX, False, holders
        )
    except OSError as error:  # a link planted at its name, say: the arena says why
        workflow.cleanup.arenas = [Arena(arena, [], _why_not(error))]
    try:
        coordination = _impl.core.Directory(name, place)
    except FileNotFoundError:
        return workflow  # only its cleanup arena is here, or it ended since it was listed
    except OSError as error:
        workflow.state = _why_not(error)
        return workflow
    try:
        workflow.coordination = _inspect_open(
            coordination, workflow.coordination.directory, False, holders
        )
        try:
            workflow.deferred = _deferred_in(coordination, workflow.coordination.directory, holders)
        except OSError as error:
            workflow.deferred_state = _why_not(error)
    except OSError as error:
        workflow.state = _why_not(error)
    finally:
        coordination.close()
    return workflow


def _deferred_in(
    coordination: "Directory", where: str, holders: dict[tuple[int, int], int]
) -> list[LockFile]:
    """The deferred-function files of a workflow's open coordination directory (shown as
    where), probed and never removed: a dead worker's file holds functions still to run."""
    try:
        deferred = _impl.core.Directory(TOIL_DEFERRED, coordination)
    except FileNotFoundError:
        return []  # no worker has run on this node yet
    shown = f"{where}/{TOIL_DEFERRED}"
    try:
        found = []
        for name, is_file, _ in sorted(_listing(deferred)):
            if is_file and TOIL_DEFERRED_FILE.fullmatch(name):
                state = _impl.core.probe(deferred, name, False, lock_flags_for)
                if state != ABSENT:
                    label = f"{TOIL_DEFERRED}/{name}"
                    found.append(_lock_file(deferred, shown, name, label, "name", state, holders))
        return found
    finally:
        deferred.close()
