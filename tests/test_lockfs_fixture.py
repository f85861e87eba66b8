"""The lockfs fixture itself (lockfs.py): two mounts of one folder behave like two GPFS nodes.

Between mount A and mount B, names and attributes are never stale, an exclusive create is
decided once for both, record locks (OFD and classic POSIX) conflict and a dead holder's
go, and flock(2) locks do not see each other.  Holders and waiters are real processes
that say what happened on stdout, one line per event, with the time (CLOCK_MONOTONIC).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from children import NOBODY, Forked
from lockfs import (
    ROOT_PREFIX,
    LockfsMounts,
    clean_leftovers,
    daemons_of,
    disk_parent,
    is_lockfs_mount,
    lockfs_mounts,
)

pytestmark = pytest.mark.distributed

# Longest wait for a child's word where no timing is being asserted.
PATIENCE = 30.0
# A waiter on one mount has the lock this soon after the holder on the other lets go.
GRANT_WITHIN = 2.0
# struct flock as Python's fcntl passes it: 64-bit offsets (CPython is built for large
# files) with native alignment; the trailing padding need not be passed.
FLOCK = struct.Struct("hhqqi")
BUSY = (errno.EAGAIN, errno.EACCES)
# The commands of each kind of record lock: non-blocking, blocking, test.
RECORD_LOCKS = {
    "ofd": ("F_OFD_SETLK", "F_OFD_SETLKW", "F_OFD_GETLK"),
    "posix": ("F_SETLK", "F_SETLKW", "F_GETLK"),
}

# Opens argv[1] (creating it), locks it whole for writing with argv[2] ("flock" or an
# fcntl command), says "locked TIME", then obeys its input line by line: "unlock" (says
# "unlocked TIME"), "fork" (a child that exits at once, closing its copy of the
# descriptor; says "forked TIME"), "close-a-dup" (says "closed TIME").
LOCKER = r"""
import fcntl, os, struct, sys, time
path, how = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
def lock(kind):
    if how == "flock":
        fcntl.flock(fd, fcntl.LOCK_EX if kind == fcntl.F_WRLCK else fcntl.LOCK_UN)
    else:
        fcntl.fcntl(fd, getattr(fcntl, how), struct.pack("hhqqi", kind, os.SEEK_SET, 0, 0, 0))
lock(fcntl.F_WRLCK)
print("locked", time.monotonic(), flush=True)
for line in sys.stdin:
    if line.strip() == "unlock":
        lock(fcntl.F_UNLCK)
        print("unlocked", time.monotonic(), flush=True)
    elif line.strip() == "fork":
        child = os.fork()
        if child == 0:
            os._exit(0)
        os.waitpid(child, 0)
        print("forked", time.monotonic(), flush=True)
    elif line.strip() == "close-a-dup":
        os.close(os.dup(fd))
        print("closed", time.monotonic(), flush=True)
"""


@pytest.fixture(scope="module")
def lockfs() -> Iterator[LockfsMounts]:
    """One backing folder mounted twice for the module (skips where it cannot be)."""
    yield from lockfs_mounts(2)


@pytest.fixture
def paths(request: pytest.FixtureRequest, lockfs: LockfsMounts) -> Iterator[tuple[Path, Path]]:
    """A fresh name in the shared folder: its path through mount A and through mount B."""
    lockfs.check_alive()
    name = f"{request.node.name}-{uuid.uuid4().hex[:8]}"
    a, b = (point / name for point in lockfs.mounts)
    yield a, b
    with contextlib.suppress(FileNotFoundError):
        a.unlink()


@contextlib.contextmanager
def locker(path: Path, how: str) -> Iterator[subprocess.Popen[bytes]]:
    """A child running LOCKER on path; killed and reaped on the way out."""
    # Unbuffered, so that select() on its stdout tells whether a line is there.
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path), how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        bufsize=0,
        cwd=tempfile.gettempdir(),
    )
    try:
        yield proc
    finally:
        proc.kill()
        try:
            # Bounded: a child blocked in a lock request the daemon never ends cannot die.
            proc.wait(PATIENCE)
        finally:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


def said(proc: subprocess.Popen[bytes], word: str, timeout: float = PATIENCE) -> float:
    """Wait for the child to say word; the time it said it at."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"the child did not say {word!r} within {timeout} s"
    line = proc.stdout.readline().decode().split()
    assert line, f"the child ended (status {proc.wait(PATIENCE)}) before saying {word!r}"
    assert line[0] == word, line
    return float(line[1])


def silent_for(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    """Whether the child is still alive, having said nothing, after seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], seconds)
    return not ready and proc.poll() is None


def tell(proc: subprocess.Popen[bytes], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line.encode() + b"\n")


def try_record_lock(path: Path, command: str) -> int:
    """0 if a fresh open of path gets a whole-file write lock at once (let go), else the errno."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.fcntl(fd, getattr(fcntl, command), FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        return 0
    except OSError as error:
        return error.errno or -1
    finally:
        os.close(fd)


def reported_lock(path: Path, command: str) -> int:
    """The type of lock that a GETLK command on a fresh open of path says is in the way."""
    fd = os.open(path, os.O_RDONLY)
    try:
        query = FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        return int(FLOCK.unpack(fcntl.fcntl(fd, getattr(fcntl, command), query))[0])
    finally:
        os.close(fd)


def try_flock(path: Path) -> int:
    """0 if a fresh open of path gets an exclusive flock at once (let go), else the errno."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return 0
    except OSError as error:
        return error.errno or -1
    finally:
        os.close(fd)


def test_two_mounts_of_one_folder(lockfs: LockfsMounts) -> None:
    a, b = lockfs.mounts
    assert is_lockfs_mount(a)
    assert is_lockfs_mount(b)
    # Two filesystems (two "nodes"), showing the backing folder's inode numbers.
    assert len({os.stat(a).st_dev, os.stat(b).st_dev, os.stat(lockfs.backing).st_dev}) == 3
    name = f"inode-{uuid.uuid4().hex}"
    (a / name).write_text("")
    try:
        inodes = {os.stat(folder / name).st_ino for folder in (a, b, lockfs.backing)}
        assert len(inodes) == 1
    finally:
        (a / name).unlink()


def test_names_and_attributes_are_never_stale(paths: tuple[Path, Path]) -> None:
    # Every check is made once, at once: no retries, so any caching would show.
    a, b = paths
    assert not b.exists()  # a lookup through B that must not be remembered
    a.write_text("through A")
    assert b.read_text() == "through A"
    assert os.stat(b).st_ino == os.stat(a).st_ino
    assert a.name in os.listdir(b.parent)
    with open(a, "rb", buffering=0) as open_on_a:
        with open(b, "a") as appended:
            appended.write(", then B")
        assert os.fstat(open_on_a.fileno()).st_size == len("through A, then B")
        assert open_on_a.read() == b"through A, then B"
        with open(b, "r+b", buffering=0) as rewritten:
            rewritten.write(b"THROUGH")  # in place: same size
        assert os.pread(open_on_a.fileno(), 7, 0) == b"THROUGH"
    a.unlink()
    assert not b.exists()
    assert a.name not in os.listdir(b.parent)
    a.write_text("a new file")
    assert os.stat(b).st_ino == os.stat(a).st_ino
    assert b.read_text() == "a new file"


def test_exclusive_create_is_decided_once_for_both(paths: tuple[Path, Path]) -> None:
    a, b = paths
    os.close(os.open(a, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    with pytest.raises(FileExistsError):
        os.open(b, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)


def test_flock_does_not_cross_mounts(paths: tuple[Path, Path]) -> None:
    a, b = paths
    a.write_text("")
    with locker(a, "flock") as on_a, locker(b, "flock") as on_b:
        said(on_a, "locked")
        said(on_b, "locked")  # both hold an exclusive flock at once
        # Within one mount, flock still excludes.
        assert try_flock(a) == errno.EWOULDBLOCK
        assert try_flock(b) == errno.EWOULDBLOCK


@pytest.mark.parametrize("kind", RECORD_LOCKS)
def test_record_lock_crosses_mounts(paths: tuple[Path, Path], kind: str) -> None:
    setlk, setlkw, getlk = RECORD_LOCKS[kind]
    a, b = paths
    with locker(a, setlk) as holder:
        said(holder, "locked")
        assert try_record_lock(b, setlk) in BUSY
        assert reported_lock(b, getlk) == fcntl.F_WRLCK
        assert try_record_lock(a, setlk) in BUSY  # and within the holder's mount
        with locker(b, setlkw) as waiter:
            assert silent_for(waiter, 0.5), "the waiter on B was not kept waiting"
            tell(holder, "unlock")
            let_go = said(holder, "unlocked")
            assert said(waiter, "locked") - let_go < GRANT_WITHIN
            assert reported_lock(a, getlk) == fcntl.F_WRLCK  # now B's, seen from A


@pytest.mark.parametrize("kind", RECORD_LOCKS)
def test_killed_holders_record_lock_goes(paths: tuple[Path, Path], kind: str) -> None:
    setlk, setlkw, _ = RECORD_LOCKS[kind]
    a, b = paths
    with locker(a, setlk) as holder:
        said(holder, "locked")
        with locker(b, setlkw) as waiter:
            assert silent_for(waiter, 0.5), "the waiter on B was not kept waiting"
            killed = time.monotonic()
            holder.send_signal(signal.SIGKILL)
            holder.wait(PATIENCE)
            assert said(waiter, "locked") - killed < GRANT_WITHIN


@pytest.mark.parametrize("kind", RECORD_LOCKS)
def test_record_lock_outlives_a_forked_child(paths: tuple[Path, Path], kind: str) -> None:
    # The child's exit closes its copy of the descriptor: neither an OFD lock (the open
    # file's) nor a classic POSIX lock (the parent process's) is the child's to drop.
    setlk, _, getlk = RECORD_LOCKS[kind]
    a, b = paths
    with locker(a, setlk) as holder:
        said(holder, "locked")
        tell(holder, "fork")
        said(holder, "forked")
        assert try_record_lock(b, setlk) in BUSY
        assert reported_lock(b, getlk) == fcntl.F_WRLCK


@pytest.mark.parametrize(
    ("kind", "dropped"), [("ofd", False), ("posix", True)], ids=["ofd-stays", "posix-dropped"]
)
def test_closing_another_descriptor(paths: tuple[Path, Path], kind: str, dropped: bool) -> None:
    # POSIX's rule, kept across mounts: closing any descriptor of the file drops the locks
    # the process holds on it; an OFD lock belongs to the open file, and stays.
    setlk = RECORD_LOCKS[kind][0]
    a, b = paths
    with locker(a, setlk) as holder:
        said(holder, "locked")
        tell(holder, "close-a-dup")
        said(holder, "closed")
        outcome = try_record_lock(b, setlk)
        assert outcome == 0 if dropped else outcome in BUSY


def test_killed_waiter_leaves_no_lock(paths: tuple[Path, Path]) -> None:
    a, b = paths
    with locker(a, "F_OFD_SETLK") as holder:
        said(holder, "locked")
        with locker(b, "F_OFD_SETLKW") as waiter:
            assert silent_for(waiter, 0.5), "the waiter on B was not kept waiting"
            # Interrupted, its wait in the daemon ends: it dies now, not once granted.
            waiter.send_signal(signal.SIGKILL)
            try:
                waiter.wait(GRANT_WITHIN)
            except subprocess.TimeoutExpired:
                pytest.fail("a killed waiter is still blocked: its interrupt was ignored")
        tell(holder, "unlock")
        said(holder, "unlocked")
        assert reported_lock(b, "F_OFD_GETLK") == fcntl.F_UNLCK
        assert try_record_lock(b, "F_OFD_SETLK") == 0


def test_other_users_may_use_it(lockfs: LockfsMounts, paths: tuple[Path, Path]) -> None:
    a, b = paths

    def lock_a(child: Forked) -> None:
        fd = os.open(a, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        child.say("locked")
        child.hear(PATIENCE)

    as_nobody = Forked(lock_a, NOBODY)
    try:
        assert as_nobody.hear(PATIENCE) == "locked", "the child as nobody failed"
        created = os.stat(lockfs.backing / a.name)
        assert (created.st_uid, created.st_gid) == NOBODY
        assert try_record_lock(b, "F_OFD_SETLK") in BUSY
    finally:
        as_nobody.kill()


# Stands up lockfs as a test session would, says where, and waits to be killed.
CRASHING_RUN = r"""
import sys
sys.path.insert(0, sys.argv[1])
import lockfs
mounts = lockfs.start_mounts(2)
print(mounts.root, flush=True)
sys.stdin.read()
"""


def test_a_killed_run_is_cleaned_up_by_the_next(lockfs: LockfsMounts) -> None:
    run = subprocess.Popen(
        [sys.executable, "-c", CRASHING_RUN, str(Path(__file__).parent)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    with run:
        try:
            root = run.stdout.readline().strip()  # type: ignore[union-attr]
            assert root, f"the run did not start (status {run.wait(PATIENCE)})"
        finally:
            run.kill()
    mounted = [Path(root, name) for name in ("mnt-a", "mnt-b")]
    assert all(is_lockfs_mount(point) for point in mounted)
    # Mount A is left with a dead daemon, as a crash of the daemon would leave it; mount B
    # busy, a file open in it.
    for pid, argv in daemons_of(root):
        if str(mounted[0]) in argv:
            os.kill(pid, signal.SIGKILL)
    held = os.open(mounted[1] / "held", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        cleaned = clean_leftovers()
    finally:
        with contextlib.suppress(OSError):  # ENOTCONN: its daemon is gone
            os.close(held)
    assert any(entry.startswith(root + ":") for entry in cleaned), cleaned
    assert not any(is_lockfs_mount(point) for point in mounted)
    assert not daemons_of(root)
    assert not os.path.exists(root)
    # Nor is anything else it owned left (its build of the daemon).
    for parent in {disk_parent(), tempfile.gettempdir()}:
        for name in os.listdir(parent):
            if name.startswith(ROOT_PREFIX):
                with contextlib.suppress(OSError):
                    owner = Path(parent, name, "owner").read_text().split()[0]
                    assert owner != str(run.pid), name
    lockfs.check_alive()
