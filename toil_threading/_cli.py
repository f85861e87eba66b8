"""The toil-threading command line (also run as ``python -m toil_threading``).

It looks into a coordination directory, explains cpu_count(), and says whether a
filesystem is safe for the locks.  Everything goes through the facade and
``toil_threading._core`` (looked up at each call, so a switched core is honoured), so
it sees the files exactly as the library does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import asdict, dataclass

import toil_threading
from toil_threading import _fs_name
from toil_threading._protocol import (
    ARENA_MEMBERS_SUFFIX,
    MUTEX_PREFIX,
    NAME_CHARACTERS,
    NAME_LENGTH,
    NAME_PREFIX,
)

PROG = "toil-threading"

# Process names and arena members are named as tempfile.mkstemp names files.
_NAME_FILE = re.compile(f"{NAME_PREFIX}[{re.escape(NAME_CHARACTERS)}]{{{NAME_LENGTH}}}")
# What a probe's answer (locked, unlocked) is called, by kind of file.
_STATES = {"mutex": ("held", "free"), "member": ("alive", "dead"), "name": ("alive", "dead")}
_LOCKED_STATES = {locked for locked, _ in _STATES.values()}
_MEMBER_STATES = ("alive", "dead", "removed")


@dataclass
class LockFile:
    """One lock file, and what probing it found."""

    name: str  # the mutex name, or the file name of a member or process name
    path: str
    state: str  # "held"/"free" for a mutex; "alive"/"dead"/"removed" for the others
    pid: int | None = None  # the holder, if /proc/locks shows it (this host and PID namespace)
    command: list[str] | None = None


@dataclass
class Arena:
    name: str
    mutex: str
    members: list[LockFile]

    def count(self, state: str) -> int:
        return sum(member.state == state for member in self.members)


@dataclass
class Inspection:
    directory: str
    mutexes: list[LockFile]
    arenas: list[Arena]
    names: list[LockFile]

    @property
    def held(self) -> bool:
        members = [member for arena in self.arenas for member in arena.members]
        return any(
            found.state in _LOCKED_STATES for found in [*self.mutexes, *members, *self.names]
        )


def _exclusive_flock_holders() -> dict[tuple[int, int], int]:
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


def _command_line(pid: int) -> list[str] | None:
    """The arguments process pid was started with; None if it is gone, hidden or a zombie."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            raw = cmdline.read()
    except OSError:
        return None
    return [os.fsdecode(arg) for arg in raw.rstrip(b"\0").split(b"\0")] if raw else None


def _probe(
    entry: os.DirEntry[str],
    name: str,
    kind: str,
    remove_dead: bool,
    holders: dict[tuple[int, int], int],
) -> LockFile | None:
    """Probe one lock file as the library does; None if it has gone since it was listed.

    The probe is a shared non-blocking flock, let go at once: a process waiting for the
    lock can be held up for no longer than that.
    """
    try:
        stat = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None
    locked = toil_threading._core.held(os.path.dirname(entry.path), entry.name, remove_dead)
    if locked is None:
        return None
    alive_word, dead_word = _STATES[kind]
    if not locked:
        return LockFile(name, entry.path, "removed" if remove_dead else dead_word)
    pid = holders.get((stat.st_dev, stat.st_ino))
    return LockFile(name, entry.path, alive_word, pid, _command_line(pid) if pid else None)


def _entries(directory: str) -> list[os.DirEntry[str]]:
    return sorted(os.scandir(directory), key=lambda entry: entry.name)


def _probe_name_files(
    entries: list[os.DirEntry[str]], kind: str, clean: bool, holders: dict[tuple[int, int], int]
) -> list[LockFile]:
    """Probe the process-name or member files among entries."""
    found = []
    for entry in entries:
        if _NAME_FILE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            probed = _probe(entry, entry.name, kind, clean, holders)
            if probed is not None:
                found.append(probed)
    return found


def inspect_directory(directory: str, clean: bool) -> Inspection:
    """Every mutex, arena and process name in directory, probed.

    With clean, dead arena members and dead process names are removed (only while still
    the file found dead, as the library does it).  Mutex files are never removed: a free
    one may be open in a process about to lock it.
    """
    holders = _exclusive_flock_holders()
    entries = _entries(directory)
    found = Inspection(directory, [], [], _probe_name_files(entries, "name", clean, holders))
    for entry in entries:
        if entry.name.startswith(MUTEX_PREFIX) and entry.is_file(follow_symlinks=False):
            mutex = _probe(entry, entry.name[len(MUTEX_PREFIX) :], "mutex", False, holders)
            if mutex is not None:
                found.mutexes.append(mutex)
        elif entry.name.endswith(ARENA_MEMBERS_SUFFIX) and entry.is_dir(follow_symlinks=False):
            try:
                arena = toil_threading.LastProcessStandingArena(
                    directory, entry.name[: -len(ARENA_MEMBERS_SUFFIX)]
                )
                members = _entries(arena.lockfileDir)
            except ValueError:  # a name the library cannot have made: not an arena
                continue
            except FileNotFoundError:  # its last member has just cleaned it up
                continue
            found.arenas.append(
                Arena(arena.name, arena.mutex, _probe_name_files(members, "member", clean, holders))
            )
    return found


def _print_table(rows: list[tuple[str, ...]]) -> None:
    """Print rows as columns aligned on their widest cell (the last column is not padded)."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)] + [
            row[-1]
        ]
        print("  ".join(cells).rstrip())


def _lock_file_row(kind: str, name: str, found: LockFile) -> tuple[str, ...]:
    pid = "" if found.pid is None else str(found.pid)
    if found.pid is None and found.state in _LOCKED_STATES:
        pid = "?"  # held by a process /proc/locks does not show: another host or PID namespace
    # On one line: a `python -c` program has newlines in it.
    command = " ".join(" ".join(found.command).split()) if found.command else ""
    return (kind, name, found.state, pid, command)


def _print_inspection(found: Inspection) -> None:
    if not (found.mutexes or found.arenas or found.names):
        print(f"{found.directory}: no mutexes, arenas or process names")
        return
    rows: list[tuple[str, ...]] = [("KIND", "NAME", "STATE", "PID", "COMMAND")]
    rows += [_lock_file_row("mutex", mutex.name, mutex) for mutex in found.mutexes]
    for arena in found.arenas:
        counts = [f"{arena.count(state)} {state}" for state in _MEMBER_STATES if arena.count(state)]
        rows.append(("arena", arena.name, ", ".join(counts) or "empty", "", ""))
        rows += [
            _lock_file_row("member", f"{arena.name}/{member.name}", member)
            for member in arena.members
        ]
    rows += [_lock_file_row("name", name.name, name) for name in found.names]
    _print_table(rows)


def _inspection_json(found: Inspection) -> dict[str, object]:
    return {
        "directory": found.directory,
        "held": found.held,
        "mutexes": [asdict(mutex) for mutex in found.mutexes],
        "arenas": [
            {
                "name": arena.name,
                "mutex": arena.mutex,
                **{state: arena.count(state) for state in _MEMBER_STATES},
                "members": [asdict(member) for member in arena.members],
            }
            for arena in found.arenas
        ],
        "names": [asdict(name) for name in found.names],
    }


def _run_inspect(args: argparse.Namespace) -> int:
    found = inspect_directory(args.directory, args.clean)
    if args.json:
        print(json.dumps(_inspection_json(found), indent=2))
    else:
        _print_inspection(found)
    return 1 if found.held else 0


def _run_cpus(args: argparse.Namespace) -> int:
    answer = toil_threading.explain_cpu_count()  # what cpu_count() works out, and caches
    if args.json:
        limits = [
            {"source": source, "cpus": cpus, "detail": detail}
            for source, cpus, detail in answer.limits
        ]
        print(json.dumps({"cpus": answer.count, "limits": limits}, indent=2))
    elif args.explain:
        print(f"cpu_count: {answer.count} (the smallest limit, at least 1)")
        rows: list[tuple[str, ...]] = [("SOURCE", "CPUS", "DETAIL")]
        rows += [
            (limit.source, "-" if limit.cpus is None else str(limit.cpus), limit.detail)
            for limit in answer.limits
        ]
        _print_table(rows)
    else:
        print(answer.count)
    return 0


_LOCAL_DISK = ("safe", "a local disk filesystem: flock works between all processes on this machine")
_SMB_SHARE = ("depends", "an SMB/CIFS share: flock between machines depends on the server")
_NETWORK = ("depends", "a network filesystem: flock between machines depends on the server")
_CLUSTER = ("depends", "a cluster filesystem: flock between nodes depends on how it is configured")
# Whether flock can be trusted on each filesystem the facade names (_FS_NAMES), and why.
# Ceph is not here: the facade refuses it, and says why itself.
_FILESYSTEM_SAFETY = {
    "tmpfs": (
        "safe",
        "in memory, local to this machine:"
        " flock works between all processes here, containers included",
    ),
    "ext2/ext3/ext4": _LOCAL_DISK,
    "xfs": _LOCAL_DISK,
    "btrfs": _LOCAL_DISK,
    "zfs": _LOCAL_DISK,
    "overlayfs": (
        "safe",
        "a container's overlay: flock works between the processes on this machine that share it",
    ),
    "nfs": (
        "depends",
        (
            "safe only with a working lock daemon (lockd); mounted with nolock or without lockd, "
            "flock fails with ENOLCK"
        ),
    ),
    "fuse": (
        "depends",
        "a FUSE filesystem: flock works between processes only if its server does it",
    ),
    "smb": _SMB_SHARE,
    "cifs": _SMB_SHARE,
    "smb2": _SMB_SHARE,
    "afs": _NETWORK,
    "9p": _NETWORK,
    "gpfs": _CLUSTER,
    "gfs2": _CLUSTER,
    "ocfs2": _CLUSTER,
    "beegfs": _CLUSTER,
    "lustre": ("depends", "Lustre: flock works between nodes only when mounted with -o flock"),
}
_UNKNOWN_FILESYSTEM = (
    "unknown",
    (
        "a filesystem this library does not know: it allows locks here, "
        "but check that flock works between every process involved"
    ),
)


def _run_fs(args: argparse.Namespace) -> int:
    kind = toil_threading._core.fs_type(args.path)
    name = _fs_name(kind)
    try:
        toil_threading.ensure_filesystem_lockable(args.path)
        verdict, reason = _FILESYSTEM_SAFETY.get(name, _UNKNOWN_FILESYSTEM)
    except RuntimeError as refusal:
        verdict, reason = "refused", str(refusal)
    magic = f"0x{kind & 0xFFFFFFFF:08x}"
    if args.json:
        report = {
            "path": args.path,
            "filesystem": name,
            "magic": magic,
            "locks": verdict,
            "reason": reason,
        }
        print(json.dumps(report, indent=2))
    else:
        _print_table(
            [
                ("path", args.path),
                ("filesystem", f"{name} (statfs type {magic})"),
                ("locks", verdict),
                ("why", reason),
            ]
        )
    return 1 if verdict == "refused" else 0


_DESCRIPTION = """\
Look at what toil_threading keeps on disk (mutexes, arenas, process names, and who
holds them), and at what it decides about this machine (CPUs, filesystems).
"""

_EPILOG = """\
examples:
  toil-threading inspect /dev/shm/coordination
  toil-threading inspect --json /dev/shm/coordination | jq '.mutexes[].pid'
  toil-threading inspect --clean /dev/shm/coordination   # remove the dead's files
  # wait until nothing in the directory is held:
  while toil-threading inspect /dev/shm/coordination >/dev/null; [ $? = 1 ]; do sleep 5; done
  toil-threading cpus --explain
  toil-threading fs /dev/shm

exit status: 0 for nothing held (inspect) or a usable filesystem (fs); 1 when something
is held or the filesystem is refused; 2 for errors.
"""


class _ShowVersion(argparse.Action):
    """--version: the installed version and the core in use.

    Looked up only when asked: importlib.metadata takes longer to import than the rest.
    """

    def __init__(self, option_strings: list[str], dest: str, help: str) -> None:
        super().__init__(option_strings, dest, nargs=0, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        from importlib.metadata import version

        core = "compiled" if toil_threading.ACCELERATED else "pure-Python"
        print(f"{PROG} {version('toil-threading')} ({core} core)")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action=_ShowVersion, help="print the version and the core in use, and exit"
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    inspect = commands.add_parser(
        "inspect",
        help="list the mutexes, arenas and process names in DIR, and who holds them "
        "(read-only unless --clean)",
        description="List every mutex file (held or free, with the holder's PID and command "
        "line when it runs on this host), every arena with its live and dead members, and "
        "every process name in DIR. Each file is probed with a non-blocking shared lock, let "
        "go at once, as the library itself does. Exit 1 if anything is held, 0 if not.",
    )
    inspect.add_argument("directory", metavar="DIR", help="the coordination directory (base_dir)")
    inspect.add_argument(
        "--clean",
        action="store_true",
        help="remove the files of dead arena members and dead process names (never a mutex file)",
    )
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.set_defaults(run=_run_inspect)

    cpus = commands.add_parser(
        "cpus",
        help="print what cpu_count() answers, and with --explain why",
        description=(
            "Print the number of whole CPUs this process may use, as cpu_count() works it out."
        ),
    )
    cpus.add_argument(
        "--explain",
        action="store_true",
        help=(
            "also list each limit considered (machine, affinity, each cgroup level) and its source"
        ),
    )
    cpus.add_argument("--json", action="store_true", help="print JSON (the answer and every limit)")
    cpus.set_defaults(run=_run_cpus)

    fs = commands.add_parser(
        "fs",
        help="name the filesystem under PATH and say whether its locks can be trusted",
        description="Name the filesystem under PATH and say whether flock can be trusted there. "
        "Exit 1 if the library refuses it (Ceph), 0 otherwise.",
    )
    fs.add_argument("path", metavar="PATH")
    fs.add_argument("--json", action="store_true", help="print JSON")
    fs.set_defaults(run=_run_fs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)  # type: ignore[no-any-return]
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        print(f"{PROG}: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
