"""global_mutex, safe_lock and friends, with real processes, files and signals."""

from __future__ import annotations

import errno
import fcntl
import multiprocessing
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    assert_locked_elsewhere,
    fds_open_on,
    linux_only,
    open_fds,
    python_with_core,
    wait_until_blocked,
)
from workers import HAMMER, MUTEX_HOLDER, expect_line, kill_all, run_together, said, say, start

import toil_threading

fork = multiprocessing.get_context("fork")


@pytest.mark.parametrize("processes,rounds", [(8, 100)])
def test_mutual_exclusion_between_processes(
    core: str, lock_dir: Path, processes: int, rounds: int
) -> None:
    reports = run_together(
        [start(HAMMER, lock_dir, rounds, "GO", core=core) for _ in range(processes)]
    )
    assert [(r["acquired"], r["violations"], r["exceptions"]) for r in reports] == [
        (rounds, 0, {})
    ] * processes
    assert os.listdir(lock_dir) == [], "the mutex or the potato was left behind"


def test_mutex_file_exists_only_while_held(core: str, lock_dir: Path, no_fd_leak: None) -> None:
    path = lock_dir / "toil-mutex-job"
    with toil_threading.global_mutex(lock_dir, "job"):
        assert path.is_file()
        assert_locked_elsewhere(path)
    assert not path.exists()


def test_sigkilled_holder_frees_the_mutex(core: str, lock_dir: Path, no_fd_leak: None) -> None:
    holder = start(MUTEX_HOLDER, lock_dir, "held", core=core)
    try:
        expect_line(holder, "held")
        with (
            pytest.raises(TimeoutError),
            toil_threading.global_mutex(lock_dir, "held", timeout=0.2),
        ):
            pass
        holder.kill()
        holder.wait()
        started = time.monotonic()
        with toil_threading.global_mutex(lock_dir, "held", timeout=10):
            assert time.monotonic() - started < 10
    finally:
        kill_all([holder])
    assert os.listdir(lock_dir) == []


def test_waiter_gets_the_mutex_after_a_normal_release(core: str, shm_dir: Path) -> None:
    ready = fork.Event()
    release = fork.Event()

    def hold() -> None:
        with toil_threading.global_mutex(shm_dir, "m"):
            ready.set()
            release.wait(30)
        os._exit(0)

    holder = fork.Process(target=hold)
    holder.start()
    try:
        assert ready.wait(30)
        fork_timer = fork.Process(target=lambda: (time.sleep(0.3), release.set()))
        fork_timer.start()
        started = time.monotonic()
        with toil_threading.global_mutex(shm_dir, "m"):
            waited = time.monotonic() - started
        fork_timer.join()
        assert 0.2 < waited < 30
    finally:
        release.set()
        holder.join(30)


def test_timeout_expires_and_leaks_nothing(core: str, shm_dir: Path) -> None:
    with toil_threading.global_mutex(shm_dir, "busy"):
        # The holder is this process; another open file description still contends.  The
        # child that times out counts its own descriptors.
        pid = os.fork()
        if pid == 0:
            before = open_fds()
            started = time.monotonic()
            try:
                with toil_threading.global_mutex(shm_dir, "busy", timeout=0.3):
                    os._exit(2)
            except TimeoutError:
                waited = time.monotonic() - started
                if open_fds() != before:
                    os._exit(5)
                os._exit(0 if 0.29 <= waited < 0.35 + 0.5 else 3)
            os._exit(4)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_zero_timeout_takes_a_free_mutex(core: str, shm_dir: Path) -> None:
    with toil_threading.global_mutex(shm_dir, "free", timeout=0):
        assert (shm_dir / "toil-mutex-free").exists()


def test_safe_lock_shared_and_exclusive(core: str, shm_dir: Path, no_fd_leak: None) -> None:
    path = shm_dir / "plain"
    path.touch()
    first = os.open(path, os.O_RDONLY)
    second = os.open(path, os.O_RDONLY)
    try:
        toil_threading.safe_lock(first, shared=True)
        toil_threading.safe_lock(second, block=False, shared=True)
        toil_threading.safe_unlock_and_close(second)
        second = os.open(path, os.O_RDONLY)
        with pytest.raises(OSError) as raised:
            toil_threading.safe_lock(second, block=False)
        assert raised.value.errno in (errno.EAGAIN, errno.EACCES)
        with pytest.raises(TimeoutError):
            toil_threading.safe_lock(second, timeout=0.1)
    finally:
        toil_threading.safe_unlock_and_close(first)
    toil_threading.safe_lock(second, block=False)
    toil_threading.safe_unlock_and_close(second)


def test_safe_unlock_and_close_closes(core: str, shm_dir: Path) -> None:
    fd = os.open(shm_dir / "f", os.O_CREAT | os.O_WRONLY)
    toil_threading.safe_lock(fd)
    toil_threading.safe_unlock_and_close(fd)
    with pytest.raises(OSError) as raised:
        os.fstat(fd)
    assert raised.value.errno == errno.EBADF


def test_bad_descriptor_is_an_oserror(core: str) -> None:
    with pytest.raises(OSError) as raised:
        toil_threading.safe_lock(987654)
    assert raised.value.errno == errno.EBADF


def test_locked_file_is(core: str, shm_dir: Path, no_fd_leak: None) -> None:
    path = shm_dir / "f"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY)
    try:
        assert toil_threading.locked_file_is(fd, path)
        assert toil_threading.locked_file_is(fd, str(path))
        os.unlink(path)
        assert not toil_threading.locked_file_is(fd, path)
        path.touch()
        assert not toil_threading.locked_file_is(fd, path)
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/abs", "nul\0byte", "x" * 250, "é" * 130])
def test_bad_mutex_names_touch_nothing(core: str, shm_dir: Path, name: str) -> None:
    with pytest.raises(ValueError, match="mutex name"), toil_threading.global_mutex(shm_dir, name):
        pass
    assert os.listdir(shm_dir) == []


def test_longest_allowed_mutex_name(core: str, shm_dir: Path) -> None:
    name = "n" * (255 - len("toil-mutex-"))
    with toil_threading.global_mutex(shm_dir, name):
        assert (shm_dir / f"toil-mutex-{name}").exists()


def test_non_str_mutex_name(core: str, shm_dir: Path) -> None:
    with pytest.raises(TypeError, match="mutex name"):
        toil_threading.global_mutex(shm_dir, b"bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [-1, float("nan"), "1", True])
def test_bad_timeouts(core: str, shm_dir: Path, timeout: object) -> None:
    with pytest.raises(ValueError, match="timeout"):
        toil_threading.global_mutex(shm_dir, "m", timeout=timeout)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        toil_threading.safe_lock(0, timeout=timeout)  # type: ignore[arg-type]
    assert os.listdir(shm_dir) == []


def test_timeout_needs_a_blocking_lock(core: str) -> None:
    with pytest.raises(ValueError, match="block"):
        toil_threading.safe_lock(0, block=False, timeout=1)


def test_missing_base_dir_is_named(core: str, tmp_path: Path, no_fd_leak: None) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError) as raised, toil_threading.global_mutex(missing, "m"):
        pass
    assert raised.value.filename == str(missing)
    assert not missing.exists()


def test_base_dir_that_is_a_file_is_named(core: str, tmp_path: Path, no_fd_leak: None) -> None:
    plain = tmp_path / "plain"
    plain.write_text("not a directory")
    with pytest.raises(NotADirectoryError) as raised, toil_threading.global_mutex(plain, "m"):
        pass
    assert raised.value.filename == str(plain)
    assert plain.read_text() == "not a directory"


def test_symlink_at_the_lock_path_is_not_followed(
    core: str, tmp_path: Path, no_fd_leak: None
) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me")
    (tmp_path / "toil-mutex-m").symlink_to(target)
    with pytest.raises(OSError) as raised, toil_threading.global_mutex(tmp_path, "m", timeout=1):
        pass
    assert raised.value.errno == errno.ELOOP
    assert target.read_text() == "keep me"
    assert (tmp_path / "toil-mutex-m").is_symlink()


def test_dangling_symlink_is_not_created_through(core: str, tmp_path: Path) -> None:
    (tmp_path / "toil-mutex-m").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError), toil_threading.global_mutex(tmp_path, "m", timeout=1):
        pass
    assert not (tmp_path / "elsewhere").exists()


def test_descriptors_after_many_acquisitions_and_failures(
    core: str, shm_dir: Path, no_fd_leak: None
) -> None:
    for _ in range(200):
        with toil_threading.global_mutex(shm_dir, "m"):
            pass
    with toil_threading.global_mutex(shm_dir, "m"):
        pid = os.fork()
        if pid == 0:
            for _ in range(20):
                try:
                    with toil_threading.global_mutex(shm_dir, "m", timeout=0):
                        os._exit(2)
                except TimeoutError:
                    pass
            os._exit(0)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    for _ in range(20):
        with pytest.raises(FileNotFoundError), toil_threading.global_mutex(shm_dir / "nope", "m"):
            pass


@linux_only
def test_mutex_descriptor_is_close_on_exec(core: str, shm_dir: Path) -> None:
    with toil_threading.global_mutex(shm_dir, "m"):
        held = fds_open_on(shm_dir / "toil-mutex-m")
        assert len(held) == 1
        flags = fcntl.fcntl(held[0], fcntl.F_GETFD)
        assert flags & fcntl.FD_CLOEXEC


def test_reentering_one_hold_is_refused(core: str, shm_dir: Path) -> None:
    hold = toil_threading.global_mutex(shm_dir, "m")
    with hold, pytest.raises(RuntimeError):
        hold.__enter__()
    assert os.listdir(shm_dir) == []


@linux_only
def test_filesystem_types_match_stat(core: str, lock_dir: Path) -> None:
    reported = subprocess.run(
        ["stat", "-f", "-c", "%t", str(lock_dir)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert toil_threading._impl.core.fs_magic(str(lock_dir)) == int(reported, 16)
    toil_threading.ensure_filesystem_lockable(lock_dir)


def test_ensure_filesystem_lockable_missing_path(core: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        toil_threading.ensure_filesystem_lockable(tmp_path / "missing")


@linux_only
def test_ctrl_c_interrupts_a_blocked_wait_promptly(core: str, shm_dir: Path) -> None:
    with toil_threading.global_mutex(shm_dir, "m"):
        child = python_with_core(
            core,
            "import sys, toil_threading\n"
            "print('waiting', flush=True)\n"
            "try:\n"
            f"    with toil_threading.global_mutex({str(shm_dir)!r}, 'm'):\n"
            "        print('acquired', flush=True)\n"
            "except KeyboardInterrupt:\n"
            "    print('interrupted', flush=True)\n",
            stdout=subprocess.PIPE,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "waiting"
            wait_until_blocked(child.pid)  # in the kernel's wait, not before it
            sent = time.monotonic()
            child.send_signal(signal.SIGINT)
            out, _ = child.communicate(timeout=10)
            assert time.monotonic() - sent < 1.0
            assert out.strip() == "interrupted"
        finally:
            child.kill()
            child.wait()


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_harmless_signals_do_not_break_a_wait(
    core: str, shm_dir: Path, timeout: float | None
) -> None:
    with toil_threading.global_mutex(shm_dir, "m"):
        child = python_with_core(
            core,
            "import signal, time, toil_threading\n"
            "fired = 0\n"
            "def tick(signum, frame):\n"
            "    global fired\n"
            "    fired += 1\n"
            "signal.signal(signal.SIGALRM, tick)\n"
            "signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)\n"
            "print('waiting', flush=True)\n"
            f"with toil_threading.global_mutex({str(shm_dir)!r}, 'm', timeout={timeout!r}):\n"
            "    signal.setitimer(signal.ITIMER_REAL, 0)\n"
            "    print('acquired', fired, flush=True)\n",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "waiting"
            time.sleep(0.5)
        except BaseException:
            child.kill()
            raise
    try:
        out, err = child.communicate(timeout=30)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 0, err
    word, fired = out.split()
    assert word == "acquired"
    assert int(fired) >= 10, "the timer never interrupted the wait"


def test_retry_policy_is_settable_and_validated(core: str) -> None:
    old = toil_threading.set_lock_retry_policy(max_tries=3, backoff=0.5)
    assert toil_threading.lock_retry_policy() == (3, 0.5, old.max_backoff)
    for bad in (
        {"max_tries": 0},
        {"max_tries": 2.5},
        {"backoff": -1},
        {"max_backoff": float("inf")},
    ):
        with pytest.raises(ValueError):
            toil_threading.set_lock_retry_policy(**bad)  # type: ignore[arg-type]
    assert toil_threading.lock_retry_policy() == (3, 0.5, old.max_backoff)


def test_retry_policy_defaults_to_toils(core: str) -> None:
    child = python_with_core(
        core,
        "import toil_threading\nprint(tuple(toil_threading.lock_retry_policy()))",
        stdout=subprocess.PIPE,
    )
    out, _ = child.communicate(timeout=30)
    assert out.strip() == "(10, 1.0, 60.0)"


def test_retry_policy_from_the_environment(core: str) -> None:
    env = {
        "TOIL_THREADING_LOCK_MAX_TRIES": "4",
        "TOIL_THREADING_LOCK_BACKOFF": "0.25",
        "TOIL_THREADING_LOCK_MAX_BACKOFF": "2",
    }
    child = python_with_core(
        core,
        "import toil_threading\nprint(tuple(toil_threading.lock_retry_policy()))",
        env=env,
        stdout=subprocess.PIPE,
    )
    out, _ = child.communicate(timeout=30)
    assert out.strip() == "(4, 0.25, 2.0)"


@pytest.mark.parametrize(
    "variable,value",
    [
        ("TOIL_THREADING_LOCK_MAX_TRIES", "many"),
        ("TOIL_THREADING_LOCK_MAX_TRIES", "0"),
        ("TOIL_THREADING_LOCK_BACKOFF", "-3"),
    ],
)
def test_bad_retry_environment_is_named(core: str, variable: str, value: str) -> None:
    child = python_with_core(
        core, "pass", env={variable: value}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _, err = child.communicate(timeout=30)
    assert child.returncode != 0
    assert "ValueError" in err and "TOIL_THREADING_LOCK_" in err


FORK_WHILE_HELD = """
import os, sys, time, toil_threading
base_dir = sys.argv[1]
with toil_threading.global_mutex(base_dir, "m"):
    child = os.fork()
    if child == 0:
        # The child inherited the held descriptor: it stays alive, holding its copy.
        time.sleep(float(sys.argv[2]))
        os._exit(0)
    print("forked", child, flush=True)
    sys.stdin.readline()
print("released", flush=True)
sys.stdin.readline()
"""


@linux_only
def test_a_fork_while_held(core: str, shm_dir: Path) -> None:
    """The parent lets the mutex go at the end of its block although a forked child still
    has the descriptor open; the child's own end of the block lets nothing go."""
    holder = start(FORK_WHILE_HELD, shm_dir, 30, core=core)
    child = 0
    try:
        child = int(said(holder).split()[1])
        with pytest.raises(TimeoutError), toil_threading.global_mutex(shm_dir, "m", timeout=0.2):
            pass
        say(holder)
        expect_line(holder, "released")
        os.kill(child, 0)  # the child, with its copy of the descriptor, is still alive
        with toil_threading.global_mutex(shm_dir, "m", timeout=5):
            pass
    finally:
        if child:  # first: it shares the holder's output pipe
            os.kill(child, signal.SIGKILL)
        kill_all([holder])


FORKED_CHILD_LEAVES = """
import os, sys, toil_threading
base_dir = sys.argv[1]
held = toil_threading.global_mutex(base_dir, "m")
held.__enter__()
child = os.fork()
if child == 0:
    held.__exit__(None, None, None)  # not the child's to let go
    os._exit(0)
os.waitpid(child, 0)
print("child left", flush=True)
sys.stdin.readline()
held.__exit__(None, None, None)
print("released", flush=True)
"""


@linux_only
def test_a_forked_child_never_lets_its_parents_mutex_go(core: str, shm_dir: Path) -> None:
    holder = start(FORKED_CHILD_LEAVES, shm_dir, core=core)
    try:
        expect_line(holder, "child left")
        assert (shm_dir / "toil-mutex-m").exists(), "the child unlinked its parent's mutex file"
        with pytest.raises(TimeoutError), toil_threading.global_mutex(shm_dir, "m", timeout=0.2):
            pass
        say(holder)
        expect_line(holder, "released")
    finally:
        kill_all([holder])
    assert os.listdir(shm_dir) == []
