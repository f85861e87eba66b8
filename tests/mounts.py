"""What the filesystem fixtures (gluster.py, lockfs.py) share: mounts, daemons, leftovers.

A fixture of either kind puts everything it makes (mount points, daemons' files, logs)
under one root folder of its own, named with the kind's prefix, and writes the pid and
start time of the process that made it into ``owner`` there.  Daemons run in sessions of
their own and outlive a run killed outright, so each run first takes down what is under
any root whose owner is gone: it unmounts the kind's mounts there (lazily where they are
busy or their daemon is dead), kills the kind's daemons whose command line names
something there, and removes the folder.  Roots whose owner lives are another session's
and are left alone.

Mount points are compared as strings with the mount table (``/proc/self/mountinfo``) and
never stat'ed on the way: a mount whose daemon is stopped would hang the caller.  The
roots are canonical paths so that the strings match.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, NoReturn

from conftest import skip_or_fail

SETUP_TIMEOUT = 30.0
UNMOUNT_TIMEOUT = 20.0
#: A root this young may not have its owner written yet.
YOUNG_ROOT_SECONDS = 60.0


# ---------------------------------------------------------------------------------------
# Programs and prerequisites.


def program(name: str) -> str | None:
    """The path of a program, looking in the sbin folders too (a non-login PATH may lack them)."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    return shutil.which(name, path=search)


def fuse_prerequisites_missing(programs: Iterable[str], setup: str) -> str | None:
    """Why FUSE mounts with these programs cannot be made here, or None when they may be.

    setup is the script that installs what is missing.
    """
    if not sys.platform.startswith("linux"):
        return f"these FUSE mounts need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return f"mounting through FUSE needs root (running as uid {os.geteuid()})"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC))
    except OSError as error:
        return (
            f"/dev/fuse cannot be opened ({error.strerror}): no FUSE in this machine or container"
        )
    missing = [name for name in programs if not program(name)]
    if missing:
        return f"missing {', '.join(missing)}; run {setup} as root"
    return None


def unavailable(what: str, reason: str) -> NoReturn:
    """Skip, or fail where every test must run (TOIL_THREADING_REQUIRE_ALL_TESTS, set by
    .ci/run), so that CI cannot skip these silently.  Not CI=true: the wheel builds' test
    runs have no FUSE filesystems and must skip."""
    skip_or_fail(f"{what} could not be set up: {reason}")
    raise AssertionError("unreachable")


def report_problems(what: str, problems: list[str]) -> None:
    """Print what a teardown could not do; teardown goes on regardless, so this is a log."""
    if problems:
        print(f"{what} teardown problems:", *problems, sep="\n  ", file=sys.stderr)


def log_tail(path: str | os.PathLike[str], lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return f"last lines of {path}:\n" + "\n".join(text[-lines:])


# ---------------------------------------------------------------------------------------
# The mount table.


class MountEntry(NamedTuple):
    mount_point: str
    fs_type: str


def _unescape(field: str) -> str:
    """Undo the octal escapes of /proc/self/mountinfo (space, tab, newline, backslash)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def mount_table() -> list[MountEntry]:
    """Every mount this process sees."""
    entries = []
    with open("/proc/self/mountinfo") as table:
        for line in table:
            before, _, after = line.partition(" - ")
            fields = before.split()
            if len(fields) >= 5 and after:
                entries.append(MountEntry(_unescape(fields[4]), after.split()[0]))
    return entries


def mounts_under(root: str) -> list[str]:
    """Mount points under root, the deepest first (so that each unmounts)."""
    inside = [entry.mount_point for entry in mount_table()]
    return sorted((p for p in inside if p.startswith(root + "/")), key=len, reverse=True)


def filesystem_type(path: str) -> str:
    """The type of the filesystem holding path, from the longest matching mount point."""
    where = os.path.realpath(path)
    best = MountEntry("", "unknown")
    for entry in mount_table():
        point = entry.mount_point.rstrip("/") + "/"
        if (where + "/").startswith(point) and len(entry.mount_point) >= len(best.mount_point):
            best = entry
    return best.fs_type


# ---------------------------------------------------------------------------------------
# Processes.


def process_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name: [0] the state, [19] the start time."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()
    except OSError:
        return None


def _gone(pid: int) -> bool:
    stat = process_stat(pid)
    return stat is None or stat[0] in ("Z", "X")


def processes(programs: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    """Running processes of these programs (by the name of argv[0]), anyone's: (pid, argv)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                argv = [arg.decode(errors="replace") for arg in cmdline.read().split(b"\0") if arg]
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) in programs:
            yield int(entry), argv


def kill_and_wait(pids: list[int], timeout: float = 10.0) -> None:
    """SIGKILL the processes and wait until they are gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            # A child of this process must be reaped; anyone else's init reaps.
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
            if _gone(pid):
                break
            time.sleep(0.02)


def reap(child: subprocess.Popen[bytes], grace: float, *, terminate: bool = False) -> None:
    """Give a child of ours grace seconds to end (after SIGTERM if terminate), then SIGKILL."""
    if terminate and child.poll() is None:
        child.terminate()
    try:
        child.wait(grace)
    except subprocess.TimeoutExpired:
        child.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(10)


def claim(root: Path) -> None:
    """Mark root as this process's, so that a later run knows when it was abandoned."""
    stat = process_stat(os.getpid())
    (root / "owner").write_text(f"{os.getpid()} {stat[19] if stat else '?'}\n")


def owner_alive(root: str) -> bool:
    """Whether the process that claimed root still runs (the same pid and start time)."""
    try:
        pid_text, start = Path(root, "owner").read_text().split()
        stat = process_stat(int(pid_text))
    except (OSError, ValueError):
        # Between mkdtemp and claim a root is young; an old one without an owner was left
        # by a crash.
        try:
            return time.time() - os.stat(root).st_mtime < YOUNG_ROOT_SECONDS
        except OSError:
            return False
    return stat is not None and stat[19] == start and stat[0] not in ("Z", "X")


# ---------------------------------------------------------------------------------------
# One kind of fixture.


@dataclass(frozen=True)
class FixtureKind:
    """What the shared machinery needs to know about one kind of filesystem fixture."""

    #: For messages: "GlusterFS", "lockfs".
    name: str
    #: Every root folder's name starts with it.
    prefix: str
    #: The type of its mounts in the mount table.
    fs_type: str
    #: The daemons whose command line names things under a root.
    programs: tuple[str, ...]
    #: The environment variable naming the folder to hold roots, instead of the defaults.
    folder_variable: str
    #: The folders tried for roots when the variable is unset, in order of preference.
    default_parents: tuple[str, ...]
    #: The unmount tried first; ``umount -l`` follows when it fails.
    unmount_command: tuple[str, ...]
    #: The exception for what cannot be set up here.
    error: type[Exception]
    #: Called with a root and the command lines of the daemons killed there, to remove
    #: what they kept outside the root.
    tidy: Callable[[str, list[list[str]]], None] | None = None

    # Mounts ------------------------------------------------------------------------------

    def is_mount(self, point: str | os.PathLike[str]) -> bool:
        """Whether point (a canonical path: it is not stat'ed) is a mount of this kind now."""
        return MountEntry(os.fspath(point), self.fs_type) in mount_table()

    def unmount(self, point: str | os.PathLike[str]) -> str | None:
        """Unmount, lazily if it is busy or its daemon is dead; None when done, else the problem."""
        point = os.fspath(point)
        if not self.is_mount(point):
            return None
        problems = []
        for command in ([*self.unmount_command, point], ["umount", "-l", point]):
            name = " ".join(command[:-1])
            try:
                done = subprocess.run(
                    [program(command[0]) or command[0], *command[1:]],
                    capture_output=True,
                    text=True,
                    timeout=UNMOUNT_TIMEOUT,
                )
                problems.append(f"{name}: {done.stderr.strip()}")
            except subprocess.TimeoutExpired:
                problems.append(f"{name} took over {UNMOUNT_TIMEOUT} s")
            if not self.is_mount(point):
                return None
        return f"{point}: " + "; ".join(problems)

    def check_alive(
        self, point: Path, daemon: subprocess.Popen[bytes] | None, log: str | os.PathLike[str]
    ) -> None:
        """Fail loudly when the daemon of point died or the mount vanished since set up."""
        if daemon is None or daemon.poll() is not None:
            status = "never started" if daemon is None else f"status {daemon.returncode}"
            raise RuntimeError(
                f"the {self.name} daemon of {point} has exited ({status}): " + log_tail(log)
            )
        if not self.is_mount(point):
            raise RuntimeError(f"{point} is no longer a {self.name} mount")

    def wait_mounted(
        self,
        point: Path,
        daemon: subprocess.Popen[bytes],
        log: Path,
        timeout: float = SETUP_TIMEOUT,
    ) -> None:
        """Wait until the mount table shows point mounted by daemon, whose log is log.

        A failed mount leaves an ordinary empty folder that silently "works", so the table
        is what counts.
        """
        deadline = time.monotonic() + timeout
        while not self.is_mount(point):
            if daemon.poll() is not None:
                raise self.error(
                    f"mounting {point} failed (status {daemon.returncode}): " + log_tail(log)
                )
            if time.monotonic() > deadline:
                raise self.error(f"{point} was not mounted within {timeout} s: " + log_tail(log))
            time.sleep(0.01)

    # Roots -------------------------------------------------------------------------------

    def parents(self) -> list[str]:
        """Where roots go: the folder the variable names, else the defaults."""
        chosen = os.environ.get(self.folder_variable)
        return [chosen] if chosen else list(self.default_parents)

    def disk_parent(self) -> str:
        """A folder on the disk (not tmpfs) for the roots, canonical."""
        candidates = self.parents()
        for candidate in candidates:
            if os.path.isdir(candidate) and filesystem_type(candidate) not in ("tmpfs", "ramfs"):
                return os.path.realpath(candidate)
        raise self.error(
            f"no folder on a disk among {candidates} (set {self.folder_variable} to one)"
        )

    def make_root(self, parent: str | None = None, infix: str = "") -> Path:
        """A fresh root claimed by this process, canonical; under disk_parent() by default."""
        made = tempfile.mkdtemp(prefix=self.prefix + infix, dir=parent or self.disk_parent())
        root = Path(os.path.realpath(made))
        claim(root)
        return root

    def root_in(self, text: str) -> str | None:
        """The root folder (``.../PREFIXXXXX``) named inside text, if any."""
        # No "=" in a folder's name: in "--log-file=/var/tmp/..." the path starts after it.
        match = re.search(r"((?:/[^\s=/]+)*/" + re.escape(self.prefix) + r"[^/\s]+)", text)
        return match.group(1) if match else None

    def processes_of(self, root: str) -> list[tuple[int, list[str]]]:
        """The daemons whose command line names something under root: (pid, argv)."""
        return [
            (pid, argv)
            for pid, argv in processes(self.programs)
            if any(self.root_in(arg) == root for arg in argv)
        ]

    def take_down(self, root: str) -> tuple[int, int, list[str]]:
        """Unmount, kill and remove everything under root, whatever state it is in.

        Returns the number of mounts and of daemons found, and the problems met.
        """
        points = mounts_under(root)
        problems = [problem for point in points if (problem := self.unmount(point))]
        daemons = self.processes_of(root)
        kill_and_wait([pid for pid, _ in daemons])
        if self.tidy is not None:
            self.tidy(root, [argv for _, argv in daemons])
        if mounts_under(root):
            problems.append(f"{root} still has mounts; left in place")
        else:
            shutil.rmtree(root, ignore_errors=True)
        return len(points), len(daemons), problems

    def clean_leftovers(self) -> list[str]:
        """Take down what runs killed outright left behind (mounts, daemons, folders).

        Only roots whose owning process is gone are touched, so a concurrent session keeps
        its own.  Returns what was cleaned, for the log.
        """
        roots = {root for entry in mount_table() if (root := self.root_in(entry.mount_point))}
        for _, argv in processes(self.programs):
            roots.update(root for arg in argv if (root := self.root_in(arg)))
        # Every parent a run may have used, whatever the variable says now.
        for parent in {*self.default_parents, os.environ.get(self.folder_variable)}:
            if parent and os.path.isdir(parent):
                roots.update(
                    os.path.join(parent, name)
                    for name in os.listdir(parent)
                    if name.startswith(self.prefix)
                )
        cleaned = []
        for root in sorted(roots):
            if owner_alive(root):
                continue
            mounts, daemons, problems = self.take_down(root)
            cleaned.append(f"{root}: {mounts} mounts, {daemons} processes")
            cleaned.extend(problems)
        return cleaned
