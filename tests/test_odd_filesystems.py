"""Odd places: read-only mounts, filesystems that make no files, working directories
deeper than PATH_MAX, and an arena entry that runs out of descriptors halfway.

Read-only mounts are real: a forked child takes a mount namespace of its own, mounts a
fresh tmpfs, makes what it needs there and remounts it read-only; the mount ends with the
child, whatever happens to the test.  /proc and sysfs are the system's own.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import resource
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from children import in_child
from conftest import linux_only, needs_root, open_fds, python_with_core, skip_or_fail

import toil_threading
from toil_threading._lockability import lock_flags_for
from toil_threading._protocol import DEAD

pytestmark = linux_only

# How quickly a filesystem that refuses to make the lock file must be told (it used to
# take about 10 s of retries).
PROMPTLY = 2.0

_CLONE_NEWNS = 0x00020000
_MS_RDONLY, _MS_REMOUNT, _MS_REC, _MS_PRIVATE = 0x1, 0x20, 0x4000, 0x40000


def _mount(source: str | None, target: str, kind: str | None, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    encoded = [None if text is None else text.encode() for text in (source, target, kind)]
    if libc.mount(*encoded, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def _private_tmpfs(mount_point: Path) -> None:
    """In a forked child: a mount namespace of its own (nothing it mounts is seen outside)
    and a fresh tmpfs at mount_point."""
    if ctypes.CDLL(None, use_errno=True).unshare(_CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNS): {os.strerror(err)}")
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    _mount("tmpfs", str(mount_point), "tmpfs", 0)


def remount_read_only(mount_point: Path) -> None:
    _mount(None, str(mount_point), None, _MS_REMOUNT | _MS_RDONLY)
    # It is read-only now: nothing can be made there.
    with pytest.raises(OSError) as refused:
        os.mkdir(mount_point / "probe")
    assert refused.value.errno == errno.EROFS


@pytest.fixture(scope="module")
def can_mount(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip (or fail, where every test must run) without root or mount namespaces."""
    needs_root()
    mount_point = tmp_path_factory.mktemp("can-mount")

    def try_it() -> str:
        try:
            _private_tmpfs(mount_point)
        except OSError as error:
            return str(error)
        return ""

    reason = in_child(try_it)
    if reason:
        skip_or_fail(f"cannot mount a tmpfs in a mount namespace of its own here: {reason}")


@pytest.fixture
def mount_point(can_mount: None, tmp_path: Path) -> Path:
    point = tmp_path / "mounted"
    point.mkdir()
    return point


def on_tmpfs(mount_point: Path, body: Callable[[], object]) -> Any:
    """body's result, run in a forked child on a fresh tmpfs of its own at mount_point."""

    def run() -> object:
        _private_tmpfs(mount_point)
        return body()

    return in_child(run, timeout=60)


def test_a_dead_name_on_a_read_only_mount_reads_dead(core: str, mount_point: Path) -> None:
    """A process takes a name and dies without cleaning up; the filesystem is remounted
    read-only; asking about the name answers False (the file cannot be removed: that is
    nobody's error), leaves the file and leaks no descriptor."""

    def body() -> object:
        dead = in_child(lambda: toil_threading.get_process_name(mount_point))
        remount_read_only(mount_point)
        before = open_fds()
        exists = toil_threading.process_name_exists(mount_point, dead)
        return exists, os.listdir(mount_point) == [dead], open_fds() - before

    assert on_tmpfs(mount_point, body) == (False, True, set())


def test_dead_members_on_a_read_only_mount_read_dead(core: str, mount_point: Path) -> None:
    """Two members enter an arena and die inside; the filesystem is remounted read-only; a
    scan of the members, asked to remove the dead ones as leaving does, and one that only
    looks, both tell each member dead, remove nothing and raise nothing."""

    def body() -> object:
        def enter_and_die() -> str | None:
            arena = toil_threading.LastProcessStandingArena(mount_point, "pool")
            arena.enter(timeout=10)
            return arena.lockfileName

        dead = sorted(in_child(enter_and_die) for _ in range(2))
        remount_read_only(mount_point)
        core_module = toil_threading._impl.core
        before = open_fds()
        members = core_module.Directory(str(mount_point / "pool-arena-members"))
        try:
            cleaning = sorted(core_module.scan(members, True, True, lock_flags_for))
            looking = sorted(core_module.scan(members, False, False, lock_flags_for))
        finally:
            members.close()
        left = sorted(os.listdir(mount_point / "pool-arena-members"))
        return dead, cleaning, looking, left, open_fds() - before

    dead, cleaning, looking, left, leaked = on_tmpfs(mount_point, body)
    assert len(dead) == 2 and None not in dead
    assert cleaning == looking == [(name, DEAD) for name in dead]
    assert (left, leaked) == (dead, set())


def entered(mutex: Any) -> None:
    with mutex:
        pass


# Each call that must make a file in base_dir, and the path its error names.
MAKING: dict[str, tuple[Callable[[str], object], str]] = {
    "global_mutex": (lambda base: entered(toil_threading.global_mutex(base, "m")), "toil-mutex-m"),
    "get_process_name": (toil_threading.get_process_name, ""),
    "arena-enter": (
        lambda base: toil_threading.LastProcessStandingArena(base, "pool").enter(),
        "toil-mutex-pool-arena-lock",
    ),
}


def told(base_dir: str, call: str) -> tuple[str, int | None, str | None, float]:
    """(exception type, errno, the path it names, seconds taken) for call in base_dir."""
    started = time.monotonic()
    try:
        MAKING[call][0](base_dir)
    except OSError as error:
        return type(error).__name__, error.errno, error.filename, time.monotonic() - started
    return "returned", None, None, time.monotonic() - started


def named(base_dir: str, call: str) -> str:
    leaf = MAKING[call][1]
    return f"{base_dir}/{leaf}" if leaf else base_dir


@pytest.mark.parametrize("call", sorted(MAKING))
def test_a_read_only_mount_fails_at_once_naming_the_path(
    core: str, mount_point: Path, call: str
) -> None:
    """On a read-only tmpfs, making a mutex, a name or an arena membership fails the first
    time with EROFS naming the file or directory, leaks no descriptor and makes nothing."""

    def body() -> object:
        remount_read_only(mount_point)
        before = open_fds()
        outcome = told(str(mount_point), call)
        return outcome, open_fds() - before, os.listdir(mount_point)

    (kind, err, path, seconds), leaked, made = on_tmpfs(mount_point, body)
    assert (kind, err, path) == ("OSError", errno.EROFS, named(str(mount_point), call))
    assert seconds < PROMPTLY
    assert (leaked, made) == (set(), [])


# Filesystems that make no files, by their statfs(2) numbers.
PSEUDO_FILESYSTEMS = {"/proc": 0x9FA0, "/sys": 0x62656572}


@pytest.mark.parametrize("call", sorted(MAKING))
@pytest.mark.parametrize("base_dir", sorted(PSEUDO_FILESYSTEMS))
def test_a_filesystem_that_makes_no_files_fails_at_once(
    core: str, base_dir: str, call: str, no_fd_leak: None
) -> None:
    """/proc refuses to create with ENOENT, sysfs with EACCES: either way the first try
    fails, naming the file (or for a name, the directory), instead of retrying for ten
    seconds as if a shared filesystem's cache had lied."""
    try:
        magic = toil_threading._impl.core.fs_magic(base_dir)
    except OSError:
        magic = None
    if magic != PSEUDO_FILESYSTEMS[base_dir]:
        pytest.skip(f"{base_dir} is not the usual pseudo-filesystem here")
    kind, err, path, seconds = told(base_dir, call)
    refusals = (errno.ENOENT,) if base_dir == "/proc" else (errno.EACCES, errno.EPERM, errno.EROFS)
    assert err in refusals, (kind, err, path)
    assert path == named(base_dir, call)
    assert seconds < PROMPTLY


def test_proc_says_why_it_cannot_hold_a_mutex(core: str) -> None:
    with pytest.raises(FileNotFoundError) as refused:
        entered(toil_threading.global_mutex("/proc", "m"))
    assert str(refused.value) == (
        "[Errno 2] cannot create a file there: the directory exists, but its filesystem"
        " makes no files: '/proc/toil-mutex-m'"
    )


# Works in a directory whose absolute path is longer than PATH_MAX, through relative
# paths, and says what each step found.
DEEP = r"""
import errno, json, os, sys, toil_threading
root = sys.argv[1]
os.chdir(root)
component = "d" * 250
for _ in range(20):  # 20 * 251 bytes: past PATH_MAX (4096)
    os.mkdir(component)
    os.chdir(component)
found = {}
try:
    os.stat(root + ("/" + component) * 20)
except OSError as error:
    found["absolute path refused"] = errno.errorcode[error.errno]
os.mkdir("base")
with toil_threading.global_mutex("base", "m"):
    found["mutex file while held"] = os.listdir("base")
with toil_threading.global_mutex(".", "m"):
    found["mutex in . while held"] = "toil-mutex-m" in os.listdir(".")
name = toil_threading.get_process_name("base")
found["own name alive"] = toil_threading.process_name_exists("base", name)
read_end, write_end = os.pipe()
child = os.fork()
if child == 0:
    os.write(write_end, toil_threading.get_process_name("base").encode())
    os._exit(0)
os.close(write_end)
dead = os.read(read_end, 100).decode()
os.waitpid(child, 0)
found["dead name alive"] = toil_threading.process_name_exists("base", dead)
found["dead name's file left"] = os.path.exists(os.path.join("base", dead))
arena = toil_threading.LastProcessStandingArena("base", "pool")
arena.enter(timeout=10)
found["members"] = os.listdir("base/pool-arena-members") == [arena.lockfileName]
found["cleanups"] = len(list(arena.leave()))
toil_threading.destroy_all_process_names()
found["left"] = os.listdir("base") + [entry for entry in os.listdir(".") if entry != "base"]
print(json.dumps(found))
"""


def test_a_working_directory_deeper_than_path_max(core: str, tmp_path: Path) -> None:
    """With the working directory 5,000 bytes deep (its absolute path refused with
    ENAMETOOLONG) and a relative base_dir, a fresh process takes mutexes (in "base" and
    in "."), names (its own alive, a dead one's dead and removed) and an arena membership
    (cleaned up by the last one out), and leaves nothing behind."""
    code = f"import sys\nsys.argv[1:] = [{str(tmp_path / 'deep')!r}]\n" + DEEP
    (tmp_path / "deep").mkdir()
    try:
        child = python_with_core(core, code, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = child.communicate(timeout=60)
    finally:
        shutil.rmtree(tmp_path / "deep")
    assert child.returncode == 0, err
    assert json.loads(out) == {
        "absolute path refused": "ENAMETOOLONG",
        "mutex file while held": ["toil-mutex-m"],
        "mutex in . while held": True,
        "own name alive": True,
        "dead name alive": False,
        "dead name's file left": False,
        "members": True,
        "cleanups": 1,
        "left": [],
    }


@contextlib.contextmanager
def descriptors_limited(more: int) -> Iterator[None]:
    """Let this process open exactly `more` descriptors beyond those it has: every number
    below the new limit but the top `more` is taken (gaps filled with /dev/null)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers = [os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)]
    try:
        top = max(map(int, os.listdir("/proc/self/fd"))) + 1
        for number in range(top):
            try:
                os.fstat(number)
            except OSError:
                fillers.append(os.dup2(fillers[0], number, inheritable=False))
        resource.setrlimit(resource.RLIMIT_NOFILE, (top + more, hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    finally:
        for number in fillers:
            os.close(number)


# What an arena entry opens in turn, and the path its error names once out of descriptors.
ENTRY_OPENS = {
    "base-directory": "",
    "arena-mutex": "/toil-mutex-pool-arena-lock",
    "members-directory": "/pool-arena-members",
    "member-file": "/pool-arena-members",
}


@pytest.mark.parametrize(
    ("failing", "premade"),
    [(failing, False) for failing in ENTRY_OPENS]
    + [("members-directory", True), ("member-file", True)],
    ids=lambda value: {False: "fresh", True: "members-directory-premade"}.get(value, value),
)
def test_an_entry_out_of_descriptors_leaves_nothing_behind(
    core: str, shm_dir: Path, failing: str, premade: bool
) -> None:
    """An arena entry that hits EMFILE at one of its opens raises it, naming the path, and
    leaves the arena as it found it: a members directory it made is removed (one that was
    there before stays), the arena's mutex is free (the next entry gets in), and no
    descriptor is left open."""
    members_dir = shm_dir / "pool-arena-members"

    def body() -> object:
        arena = toil_threading.LastProcessStandingArena(shm_dir, "pool")
        arena.enter(timeout=10)  # the filesystem met and every module loaded, before the limit
        assert list(arena.leave()) == [True]
        if premade:
            members_dir.mkdir()
        before = open_fds()
        with descriptors_limited(list(ENTRY_OPENS).index(failing)):
            try:
                arena.enter(timeout=10)
                outcome: tuple[object, ...] = ("entered",)
            except OSError as error:
                outcome = (error.errno, str(error))
        leaked = open_fds() - before
        left = sorted(os.listdir(shm_dir))
        arena.enter(timeout=10)
        return outcome, arena.lockfileName is not None, leaked, left, list(arena.leave())

    outcome, got_in, leaked, left, cleanups = in_child(body)
    path = f"{shm_dir}{ENTRY_OPENS[failing]}"
    assert outcome == (errno.EMFILE, f"[Errno {errno.EMFILE}] Too many open files: '{path}'")
    assert leaked == set()
    assert left == (["pool-arena-members"] if premade else [])
    assert (got_in, cleanups) == (True, [True])


def test_an_entry_whose_member_cannot_be_locked_leaves_nothing_behind(
    core: str, shm_dir: Path, faultlib: str
) -> None:
    """flock fails (ENOMEM, injected) on the member file: the entry raises it, and removes
    the member file and the members directory it made; the arena's mutex is free."""
    code = f"""
import json, os
base = {str(shm_dir)!r}
arena = toil_threading.LastProcessStandingArena(base, "pool")
try:
    arena.enter(timeout=10)
    print(json.dumps(["entered"]))
except OSError as error:
    print(json.dumps([error.errno, error.filename, sorted(os.listdir(base))]))
"""
    env = {
        "LD_PRELOAD": faultlib,
        "FAULT_FLOCK_PATH": f"{shm_dir}/pool-arena-members/",
        "FAULT_FLOCK_ERRNO": str(errno.ENOMEM),
        "FAULT_FLOCK_TIMES": "-1",
    }
    child = python_with_core(core, code, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    err_number, path, left = json.loads(out)
    assert err_number == errno.ENOMEM
    assert path.startswith(f"{shm_dir}/pool-arena-members/tmp"), path
    assert left == []
    arena = toil_threading.LastProcessStandingArena(shm_dir, "pool")
    arena.enter(timeout=5)
    assert list(arena.leave()) == [True]
