"""lockfs (lockfs.c): one folder mounted several times through FUSE, like GPFS on several nodes.

Each mount of the backing folder stands in for a node of a cluster sharing a directory:
fcntl record locks (classic POSIX and OFD) taken through one mount conflict with those
taken through another, flock(2) locks do not (the kernel keeps them inside each mount),
and names and attributes are never cached, so what one mount changes the others see at
once.  The daemon is built once per session with the system compiler.

Everything (the backing folder, the mount points, the daemons' logs) lives under one
folder named ``toil-threading-lockfs-*`` on the disk, and so does the daemon's build.  A
run killed outright leaves daemons and mounts behind; the next run removes those of any
run whose pytest process is gone before starting its own (the machinery is in mounts.py).

Facts this relies on (Debian 12, Linux 6.x, libfuse 3.14):

- a record lock reaches the daemon as SETLK/SETLKW/GETLK, and the close of the last
  descriptor of an open file as RELEASE, which the kernel sends asynchronously: close(2)
  returns before the daemon has dropped that open's locks (for well under a millisecond;
  an explicit unlock is synchronous);
- a client killed while blocked in a lock wait is interrupted (INTERRUPT), its wait in
  the daemon ends and the client dies at once;
- mounting as root needs neither fusermount3 nor /etc/fuse.conf, but unmounting uses
  fusermount3 (``umount -l`` when that fails: a busy or dead mount).

``LOCKFS_TRACE=1`` in the tests' environment has the daemons log every lock request,
flush and release to ``lockfs-a.log``, ``lockfs-b.log``, ... in the root folder.
"""

from __future__ import annotations

import atexit
import functools
import os
import shlex
import shutil
import string
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mounts import (
    FixtureKind,
    fuse_prerequisites_missing,
    program,
    reap,
    report_problems,
    unavailable,
)

ROOT_PREFIX = "toil-threading-lockfs-"
SOURCE = Path(__file__).with_name("lockfs.c")
FS_TYPE = "fuse.lockfs"
COMMAND_TIMEOUT = 20.0


class LockfsUnavailable(Exception):
    """lockfs cannot be mounted here; the message says why."""


# ---------------------------------------------------------------------------------------
# Looking around: prerequisites; mounts, daemons and leftovers (mounts.py).


def prerequisites_missing() -> str | None:
    """Why lockfs cannot be built and mounted on this machine, or None when it may try."""
    needed = ("fusermount3", "umount", "cc", "pkg-config")
    missing = fuse_prerequisites_missing(needed, ".ci/lockfs-setup")
    if missing:
        return missing
    found = subprocess.run(["pkg-config", "--exists", "fuse3"], timeout=COMMAND_TIMEOUT)
    if found.returncode != 0:
        return "libfuse3's headers are not installed (libfuse3-dev); run .ci/lockfs-setup as root"
    return None


KIND = FixtureKind(
    name="lockfs",
    prefix=ROOT_PREFIX,
    fs_type=FS_TYPE,
    programs=("lockfs",),
    folder_variable="TOIL_THREADING_LOCKFS_DIR",
    default_parents=(tempfile.gettempdir(), "/var/tmp"),
    # Unmounting a FUSE mount goes through fusermount3 (mounting as root did not).
    unmount_command=("fusermount3", "-u"),
    error=LockfsUnavailable,
)
is_lockfs_mount = KIND.is_mount
disk_parent = KIND.disk_parent
daemons_of = KIND.processes_of
clean_leftovers = KIND.clean_leftovers


# ---------------------------------------------------------------------------------------
# Standing it up.


@functools.cache
def build() -> Path:
    """The lockfs daemon, compiled once per process into a folder of its own."""
    cc, pkg_config = program("cc"), program("pkg-config")
    if cc is None or pkg_config is None:
        raise LockfsUnavailable("cc or pkg-config is missing; run .ci/lockfs-setup as root")
    folder = KIND.make_root(tempfile.gettempdir(), "build-")
    atexit.register(shutil.rmtree, folder, True)
    flags = subprocess.run(
        [pkg_config, "--cflags", "--libs", "fuse3"],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    if flags.returncode != 0:
        raise LockfsUnavailable(f"pkg-config knows no fuse3: {flags.stderr.strip()}")
    binary = folder / "lockfs"
    # Our own source failing to compile is a bug, not a missing prerequisite.
    subprocess.run(
        [cc, "-Wall", "-O2", "-o", str(binary), str(SOURCE), *shlex.split(flags.stdout)],
        check=True,
        timeout=120,
    )
    return binary


@dataclass
class LockfsMounts:
    """A backing folder and its mounts (in order: A, B, ...), each served by its own daemon."""

    root: Path
    backing: Path
    mounts: list[Path]
    daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def log(self, index: int) -> Path:
        return self.root / f"lockfs-{string.ascii_lowercase[index]}.log"

    def check_alive(self) -> None:
        """Fail loudly when a daemon died or a mount vanished since they were set up."""
        for index, (point, daemon) in enumerate(zip(self.mounts, self.daemons, strict=True)):
            KIND.check_alive(point, daemon, self.log(index))

    def close(self) -> list[str]:
        """Unmount, end the daemons, remove everything; returns the problems met."""
        problems = [p for point in reversed(self.mounts) if (p := KIND.unmount(point))]
        # Unmounted, a daemon ends by itself; a lazily unmounted one may still be serving.
        deadline = time.monotonic() + 5
        for daemon in self.daemons:
            reap(daemon, max(0.0, deadline - time.monotonic()))
        problems.extend(KIND.take_down(str(self.root))[2])
        return problems


def start_mounts(count: int = 2) -> LockfsMounts:
    """A fresh backing folder mounted count times; LockfsUnavailable where it cannot be."""
    if not 1 <= count <= len(string.ascii_lowercase):
        raise ValueError(f"count must be 1 to {len(string.ascii_lowercase)}, not {count}")
    binary = build()
    root = KIND.make_root()
    # Reachable by anyone (tests drop privileges), and like /dev/shm: anyone may create.
    root.chmod(0o755)
    names = string.ascii_lowercase[:count]
    mounts = LockfsMounts(root, root / "backing", [root / f"mnt-{name}" for name in names])
    mounts.backing.mkdir()
    mounts.backing.chmod(0o1777)
    try:
        for index, point in enumerate(mounts.mounts):
            point.mkdir()
            with open(mounts.log(index), "wb") as log:
                # In the foreground, a child of ours with a known pid; in a session of its
                # own, so that a Ctrl-C at the terminal does not end it before teardown.
                mounts.daemons.append(
                    subprocess.Popen(
                        [str(binary), str(mounts.backing), str(point), "-f"],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                        start_new_session=True,
                    )
                )
            KIND.wait_mounted(point, mounts.daemons[index], mounts.log(index))
            # The daemon answers, and with the backing folder.
            if os.stat(point).st_ino != os.stat(mounts.backing).st_ino:
                raise RuntimeError(f"{point} does not show {mounts.backing}")
    except BaseException:
        mounts.close()
        raise
    return mounts


# ---------------------------------------------------------------------------------------
# Fixture body.


def lockfs_mounts(count: int = 2) -> Iterator[LockfsMounts]:
    """The body of a fixture: a backing folder mounted count times, taken down after.

    Clears what runs killed outright left behind first.  Skips (or fails, see
    `mounts.unavailable`) where lockfs cannot be mounted.
    """
    reason = prerequisites_missing()
    if reason:
        unavailable(KIND.name, reason)
    clean_leftovers()
    try:
        mounts = start_mounts(count)
    except LockfsUnavailable as error:
        unavailable(KIND.name, str(error))
    try:
        yield mounts
    finally:
        report_problems(KIND.name, mounts.close())
