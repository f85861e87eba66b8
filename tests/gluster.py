"""GlusterFS on loopback for the `distributed` tests: one glusterd, a volume per caching mode.

Each volume is mounted twice through the FUSE client (mount A and mount B): two independent
clients of one volume stand in for two nodes of a cluster sharing a directory.  Everything
(glusterd's working directory, the bricks, the mount points, the logs) lives under one
folder named ``toil-threading-gluster-*`` on the disk, and every daemon listens on
127.0.0.1 only.

Facts this relies on (Debian 12, glusterfs 10.3):

- the packages start nothing; ``glusterd -N -f VOLFILE`` runs one in the foreground, its
  working directory, CLI socket and listening address set by the volume file, and the
  ``gluster`` CLI reaches it through ``--glusterd-sock``;
- the management port must be the default 24007: brick processes fetch their volfile
  from it whatever glusterd listens on, so a glusterd already on 127.0.0.1:24007 (the
  system's, or another test session's) leaves no room for ours;
- a brick's host must be a name resolving to 127.0.0.1 (the CLI refuses ``localhost`` and
  addresses); bricks on the root filesystem need ``force``;
- ``glusterfs --volfile-server=HOST --volfile-id=/VOL MOUNTPOINT`` mounts; a mount that
  failed leaves an ordinary empty folder behind, so the mount table is checked.

The fixture bodies at the bottom (the fixtures themselves are in test_distributed.py)
skip with the reason where this cannot be set up, or fail when
``TOIL_THREADING_REQUIRE_ALL_TESTS`` is set.  A run killed outright leaves daemons and
mounts behind; the next run removes those of any run whose pytest process is gone before
starting its own (the machinery is in mounts.py), and the sockets and logs their bricks
left in /var/run/gluster and /var/log/glusterfs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from mounts import (
    SETUP_TIMEOUT,
    FixtureKind,
    fuse_prerequisites_missing,
    kill_and_wait,
    log_tail,
    program,
    reap,
    report_problems,
    unavailable,
)

ROOT_PREFIX = "toil-threading-gluster-"
GLUSTERD_PORT = 24007
LOOPBACK = "127.0.0.1"
CACHING_MODES = ("default", "strict")

#: Client-side caching translators turned off on the "strict" volume.
STRICT_VOLUME_OFF = (
    "write-behind",
    "quick-read",
    "open-behind",
    "stat-prefetch",
    "io-cache",
    "read-ahead",
    "readdir-ahead",
    "nl-cache",
)
#: FUSE options of the "strict" mounts: no kernel caching of data, attributes or names.
STRICT_MOUNT_OPTIONS = (
    "--direct-io-mode=enable",
    "--fopen-keep-cache=off",
    "--attribute-timeout=0",
    "--entry-timeout=0",
    "--negative-timeout=0",
)

FUSE_SUPER_MAGIC = 0x65735546
COMMAND_TIMEOUT = 60.0


class GlusterUnavailable(Exception):
    """GlusterFS cannot be stood up here; the message says why."""


# ---------------------------------------------------------------------------------------
# Looking around: prerequisites, the host, what bricks leave outside the root.


def prerequisites_missing() -> str | None:
    """Why the fixture cannot run on this machine, or None when it may try."""
    needed = ("glusterd", "glusterfs", "gluster", "umount")
    return fuse_prerequisites_missing(needed, ".ci/gluster-setup")


def _program(name: str) -> str:
    found = program(name)
    if found is None:
        raise GlusterUnavailable(f"{name} is not installed; run .ci/gluster-setup as root")
    return found


def brick_host() -> str:
    """A host name resolving to 127.0.0.1 only: the CLI refuses 'localhost' and addresses."""
    candidates = [os.environ.get("TOIL_THREADING_GLUSTER_HOST", ""), socket.gethostname()]
    tried = []
    for name in filter(None, candidates):
        try:
            found = {info[4][0] for info in socket.getaddrinfo(name, None, socket.AF_INET)}
        except OSError as error:
            tried.append(f"{name!r} does not resolve ({error})")
            continue
        if found == {LOOPBACK}:
            return name
        tried.append(f"{name!r} resolves to {sorted(found)}")
    raise GlusterUnavailable(
        "no host name for the brick resolves to 127.0.0.1 only ("
        + "; ".join(tried)
        + "); add '127.0.0.1 <hostname>' to /etc/hosts or set TOIL_THREADING_GLUSTER_HOST"
    )


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        return probe.connect_ex((LOOPBACK, port)) == 0


def _argument(argv: list[str], *flags: str) -> str | None:
    for index, arg in enumerate(argv):
        for flag in flags:
            if arg == flag and index + 1 < len(argv):
                return argv[index + 1]
            if flag.startswith("--") and arg.startswith(flag + "="):
                return arg[len(flag) + 1 :]
    return None


def _remove_brick_droppings(argv: list[str]) -> None:
    """A brick process keeps its socket in /var/run/gluster and its log in /var/log: remove them."""
    for path, allowed in (
        (_argument(argv, "-S", "--socket-file"), ("/var/run/gluster/", "/run/gluster/")),
        (_argument(argv, "-l", "--log-file"), ("/var/log/glusterfs/bricks/",)),
    ):
        if path and path.startswith(allowed):
            with contextlib.suppress(OSError):
                os.unlink(path)


def remove_brick_logs(under: str) -> None:
    """Remove the logs glusterd had bricks under this folder write in /var/log/glusterfs/bricks.

    glusterd names a brick's log after the brick's path, '/' turned into '-'.
    """
    mangled = under.strip("/").replace("/", "-")
    folder = "/var/log/glusterfs/bricks"
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            if name.endswith(".log") and (
                name == mangled + ".log" or name.startswith(mangled + "-")
            ):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))


def _tidy(under: str, killed: list[list[str]]) -> None:
    """Remove what the killed brick processes (their command lines) kept outside our folder."""
    for argv in killed:
        _remove_brick_droppings(argv)
    remove_brick_logs(under)


KIND = FixtureKind(
    name="GlusterFS",
    prefix=ROOT_PREFIX,
    fs_type="fuse.glusterfs",
    programs=("glusterd", "glusterfsd", "glusterfs"),
    folder_variable="TOIL_THREADING_GLUSTER_DIR",
    # /var/tmp first: bricks must not eat memory where the temporary folder is tmpfs.
    default_parents=("/var/tmp", tempfile.gettempdir()),
    unmount_command=("umount",),
    error=GlusterUnavailable,
    tidy=_tidy,
)
clean_leftovers = KIND.clean_leftovers


# ---------------------------------------------------------------------------------------
# Standing it up.


@dataclass
class Volume:
    """A started volume mounted twice: two independent FUSE clients of one set of files."""

    cluster: GlusterCluster
    mode: str
    name: str
    brick: Path
    a: Path
    b: Path
    clients: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def check_alive(self) -> None:
        """Fail loudly when a client died or a mount vanished since the volume was set up."""
        for label, point in (("A", self.a), ("B", self.b)):
            log = self.cluster.logs / f"{self.name}-{label}.log"
            KIND.check_alive(point, self.clients.get(label), log)

    def close(self) -> list[str]:
        """Unmount both, stop the volume; returns the problems met (teardown goes on regardless)."""
        problems = []
        for label, point in (("B", self.b), ("A", self.a)):
            problem = KIND.unmount(point)
            if problem:
                problems.append(problem)
            client = self.clients.pop(label, None)
            if client is not None:
                reap(client, 10)
        # The brick process's command line names its socket and log outside our folder.
        bricks = self.brick_processes()
        if self.cluster.running():
            try:
                self.cluster.cli("volume", "stop", self.name, "force")
            except GlusterUnavailable as error:
                problems.append(str(error))
        # The brick outlives the CLI's failures and even glusterd: end it by its pid.
        kill_and_wait([pid for pid, _ in self.brick_processes()])
        _tidy(str(self.brick), [argv for _, argv in bricks])
        return problems

    def brick_processes(self) -> list[tuple[int, list[str]]]:
        return [
            (pid, argv)
            for pid, argv in KIND.processes_of(str(self.cluster.root))
            if str(self.brick) in argv
        ]


class GlusterCluster:
    """One glusterd on 127.0.0.1, its state under a fresh folder on the disk."""

    def __init__(self) -> None:
        self.host = brick_host()
        self.root = KIND.make_root()
        self.logs = self.root / "log"
        self.run_dir = self.root / "run"
        self.socket = self.run_dir / "glusterd.socket"
        self.glusterd: subprocess.Popen[bytes] | None = None
        self.volumes: list[Volume] = []

    # glusterd ----------------------------------------------------------------------------

    def start(self) -> None:
        if port_in_use(GLUSTERD_PORT):
            raise GlusterUnavailable(
                f"{LOOPBACK}:{GLUSTERD_PORT} is already in use (a system glusterd, or another "
                "test session's); bricks can only reach a glusterd on that port"
            )
        work = self.root / "glusterd"
        for folder in (work, self.logs, self.run_dir, self.root / "bricks", self.root / "mnt"):
            folder.mkdir()
        volfile = self.root / "glusterd.vol"
        volfile.write_text(
            "volume management\n"
            "    type mgmt/glusterd\n"
            f"    option working-directory {work}\n"
            f"    option run-directory {self.run_dir}\n"
            f"    option glusterd-sockfile {self.socket}\n"
            "    option transport-type socket\n"
            "    option transport.address-family inet\n"
            f"    option transport.socket.bind-address {LOOPBACK}\n"
            f"    option transport.socket.listen-port {GLUSTERD_PORT}\n"
            "    option ping-timeout 0\n"
            "    option event-threads 1\n"
            "end-volume\n"
        )
        log = self.logs / "glusterd.log"
        with open(self.logs / "glusterd.stderr", "wb") as stderr:
            self.glusterd = subprocess.Popen(
                [
                    _program("glusterd"),
                    "-N",
                    "-f",
                    str(volfile),
                    "-p",
                    str(self.run_dir / "glusterd.pid"),
                    "-l",
                    str(log),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # a Ctrl-C at the terminal must not kill it before teardown
            )
        deadline = time.monotonic() + SETUP_TIMEOUT
        while True:
            if self.glusterd.poll() is not None:
                raise GlusterUnavailable(
                    f"glusterd exited with status {self.glusterd.returncode}: " + log_tail(log)
                )
            probe = self._run_cli(["pool", "list"], timeout=10)
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise GlusterUnavailable(
                    f"glusterd did not answer `gluster pool list` within {SETUP_TIMEOUT} s "
                    f"({probe.stdout.strip()} {probe.stderr.strip()}): " + log_tail(log)
                )
            time.sleep(0.05)

    def running(self) -> bool:
        return self.glusterd is not None and self.glusterd.poll() is None

    def _run_cli(
        self, args: list[str], timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        command = [
            _program("gluster"),
            "--mode=script",
            f"--glusterd-sock={self.socket}",
            f"--log-file={self.logs / 'cli.log'}",
            *args,
        ]
        try:
            return subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(command, -1, "", f"timed out after {timeout} s")

    def cli(self, *args: str) -> str:
        done = self._run_cli(list(args))
        if done.returncode != 0:
            raise GlusterUnavailable(
                f"`gluster {' '.join(args)}` failed ({done.returncode}): "
                f"{done.stdout.strip()} {done.stderr.strip()}"
            )
        return done.stdout

    # volumes -----------------------------------------------------------------------------

    def volume(self, mode: str) -> Volume:
        """Create, start and mount twice the volume of a caching mode ("default" or "strict")."""
        if mode not in CACHING_MODES:
            raise ValueError(f"caching mode {mode!r} is not one of {CACHING_MODES}")
        name = f"toilthr-{mode}"
        brick = self.root / "bricks" / mode
        brick.mkdir()
        volume = Volume(
            self,
            mode,
            name,
            brick,
            self.root / "mnt" / f"{mode}-a",
            self.root / "mnt" / f"{mode}-b",
        )
        self.volumes.append(volume)
        # "force": the brick is on the root filesystem, which gluster otherwise refuses.
        self.cli("volume", "create", name, f"{self.host}:{brick}", "force")
        if mode == "strict":
            for translator in STRICT_VOLUME_OFF:
                self.cli("volume", "set", name, f"performance.{translator}", "off")
        self.cli("volume", "start", name)
        if mode == "strict":
            settings = self.cli("volume", "get", name, "all")
            for translator in STRICT_VOLUME_OFF:
                match = re.search(rf"^performance\.{re.escape(translator)}\s+(\S+)", settings, re.M)
                if not match or match.group(1) != "off":
                    raise RuntimeError(f"performance.{translator} is not off on {name}: {match}")
        options = STRICT_MOUNT_OPTIONS if mode == "strict" else ()
        for label, point in (("A", volume.a), ("B", volume.b)):
            point.mkdir()
            log = self.logs / f"{name}-{label}.log"
            # Registered before waiting, so that teardown ends it whatever happens next.
            volume.clients[label] = client = self._start_client(name, point, log, options)
            self._wait_usable(client, point, log)
        self._check_shared(volume)
        return volume

    def _start_client(
        self, name: str, point: Path, log: Path, options: tuple[str, ...]
    ) -> subprocess.Popen[bytes]:
        # The client itself, not `mount -t glusterfs` (whose helper mangles some options),
        # in the foreground so that it is a child of ours with a known pid.
        with open(log.with_suffix(".stderr"), "wb") as stderr:
            return subprocess.Popen(
                [
                    _program("glusterfs"),
                    "-N",
                    f"--volfile-server={self.host}",
                    f"--volfile-id=/{name}",
                    f"--log-file={log}",
                    *options,
                    str(point),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )

    def _wait_usable(self, client: subprocess.Popen[bytes], point: Path, log: Path) -> None:
        """Wait for the mount, then for the filesystem behind it to answer."""
        deadline = time.monotonic() + SETUP_TIMEOUT
        KIND.wait_mounted(point, client, log)
        while True:
            try:
                os.listdir(point)
                return
            except OSError as error:  # ENOTCONN while the client connects to the brick
                if time.monotonic() > deadline:
                    raise GlusterUnavailable(
                        f"{point} mounted but unusable ({error}): " + log_tail(log)
                    ) from error
                time.sleep(0.05)

    def _check_shared(self, volume: Volume) -> None:
        """The two mounts are two clients of the same files, not one folder twice."""
        if os.stat(volume.a).st_dev == os.stat(volume.b).st_dev:
            raise RuntimeError(f"{volume.a} and {volume.b} are the same mount")
        probe = f".probe-{uuid.uuid4().hex}"
        Path(volume.a, probe).write_text("through A")
        try:
            deadline = time.monotonic() + SETUP_TIMEOUT
            while True:
                try:
                    if Path(volume.b, probe).read_text() == "through A":
                        break
                except FileNotFoundError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"a file written through {volume.a} never showed through {volume.b}"
                    )
                time.sleep(0.05)
        finally:
            Path(volume.a, probe).unlink()

    def close_volume(self, volume: Volume) -> list[str]:
        problems = volume.close()
        with contextlib.suppress(ValueError):
            self.volumes.remove(volume)
        return problems

    # teardown ----------------------------------------------------------------------------

    def close(self) -> list[str]:
        """Take everything down, whatever state it is in; returns the problems met."""
        problems = []
        for volume in list(self.volumes):
            problems.extend(self.close_volume(volume))
        if self.glusterd is not None:
            reap(self.glusterd, 10, terminate=True)
        # Anything still naming our folder (a brick the CLI could not stop) ends here.
        problems.extend(KIND.take_down(str(self.root))[2])
        return problems


# ---------------------------------------------------------------------------------------
# Fixture bodies.


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While daemons and mounts are up, SIGTERM unwinds like Ctrl-C so that teardown runs."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    installed = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    )
    if installed:
        signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def cluster_for_session() -> Iterator[GlusterCluster]:
    """The body of a session fixture: one glusterd on 127.0.0.1, torn down after.

    Clears what runs killed outright left behind first.  Skips (or fails, see
    `mounts.unavailable`) where GlusterFS cannot be stood up.
    """
    reason = prerequisites_missing()
    if reason:
        unavailable(KIND.name, reason)
    clean_leftovers()
    try:
        cluster = GlusterCluster()
    except GlusterUnavailable as error:
        unavailable(KIND.name, str(error))
    with _sigterm_as_interrupt():
        try:
            try:
                cluster.start()
            except GlusterUnavailable as error:
                unavailable(KIND.name, str(error))
            yield cluster
        finally:
            report_problems(KIND.name, cluster.close())


def volume_for_session(cluster: GlusterCluster, mode: str) -> Iterator[Volume]:
    """The body of a session fixture: the volume of one caching mode, mounted twice."""
    try:
        try:
            volume = cluster.volume(mode)
        except GlusterUnavailable as error:
            unavailable(KIND.name, f"{mode} volume: {error}")
        yield volume
    finally:
        for built in [v for v in cluster.volumes if v.mode == mode]:
            report_problems(KIND.name, cluster.close_volume(built))


@dataclass(frozen=True)
class SharedDir:
    """One fresh folder of a volume, through each of its two mounts."""

    mode: str
    a: Path
    b: Path


def fresh_shared_dir(volume: Volume, label: str) -> Iterator[SharedDir]:
    """The body of a test's fixture: a new folder made through mount A, seen through B.

    label (the test's name) goes into the folder's name, made unique.
    """
    volume.check_alive()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", label)[:80] + "-" + uuid.uuid4().hex[:8]
    a = volume.a / name
    b = volume.b / name
    a.mkdir()
    deadline = time.monotonic() + SETUP_TIMEOUT
    while not b.is_dir():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{a} made through mount A never showed through mount B as {b}")
        time.sleep(0.02)
    yield SharedDir(volume.mode, a, b)
    shutil.rmtree(a, ignore_errors=True)
