"""LastProcessStandingArena: real processes, SIGKILL, descriptor counts, Toil's own module."""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import current_umask, python_with_core, run_toil

import toil_threading

fork = multiprocessing.get_context("fork")


def arena_task(base_dir: str, task: int) -> bool:
    """Toil's scenario: enter, leave a file, check it is untouched, leave; last one cleans."""
    arena = toil_threading.LastProcessStandingArena(base_dir, "work")
    stuff = os.path.join(base_dir, "stuff")
    arena.enter()
    try:
        os.makedirs(stuff, exist_ok=True)
        mine = os.path.join(stuff, f"task-{task}")
        with open(mine, "w") as handle:
            handle.write(str(task))
        time.sleep(random.uniform(0.001, 0.01))
        with open(mine) as handle:
            untouched = handle.read() == str(task)
    finally:
        for _ in arena.leave():
            for name in os.listdir(stuff):
                os.unlink(os.path.join(stuff, name))
    return untouched


def test_last_process_standing_cleans_up_everyones_files(core: str, lock_dir: Path) -> None:
    with fork.Pool(8) as pool:
        for _ in range(10):
            results = pool.starmap(arena_task, [(str(lock_dir), task) for task in range(100)])
            assert results == [True] * 100
            assert os.listdir(lock_dir / "stuff") == []
            assert sorted(os.listdir(lock_dir)) == ["stuff"], "members or mutex left behind"


def enter_and_wait(base_dir: str, ready: multiprocessing.synchronize.Event) -> None:
    arena = toil_threading.LastProcessStandingArena(base_dir, "work")
    arena.enter()
    ready.set()
    time.sleep(600)


def test_sigkilled_members_do_not_stop_the_cleanup(core: str, lock_dir: Path) -> None:
    doomed = []
    for _ in range(3):
        ready = fork.Event()
        member = fork.Process(target=enter_and_wait, args=(str(lock_dir), ready))
        member.start()
        assert ready.wait(30)
        doomed.append(member)
    members_dir = lock_dir / "work-arena-members"
    dead_files = set(os.listdir(members_dir))
    assert len(dead_files) == 3
    survivors = [toil_threading.LastProcessStandingArena(lock_dir, "work") for _ in range(2)]
    for survivor in survivors:
        survivor.enter()
    for member in doomed:
        os.kill(member.pid, signal.SIGKILL)
        member.join()
    cleanups = [sum(1 for _ in survivor.leave()) for survivor in survivors]
    assert cleanups == [0, 1]
    assert not members_dir.exists(), "dead members' files or the directory were left"
    assert os.listdir(lock_dir) == []


def test_body_runs_under_the_arena_mutex(core: str, shm_dir: Path) -> None:
    arena = toil_threading.LastProcessStandingArena(shm_dir, "work")
    arena.enter()
    for _ in arena.leave():
        fd = os.open(shm_dir / "toil-mutex-work-arena-lock", os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        newcomer = python_with_core(
            core,
            "import toil_threading\n"
            f"arena = toil_threading.LastProcessStandingArena({str(shm_dir)!r}, 'work')\n"
            "try:\n"
            "    arena.enter(timeout=0.2)\n"
            "except TimeoutError:\n"
            "    print('kept out')\n",
            stdout=subprocess.PIPE,
        )
        assert newcomer.communicate(timeout=30)[0].strip() == "kept out"
    assert os.listdir(shm_dir) == []


def test_member_file_layout(core: str, shm_dir: Path) -> None:
    arena = toil_threading.LastProcessStandingArena(shm_dir, "work")
    arena.enter()
    try:
        members = os.listdir(shm_dir / "work-arena-members")
        assert members == [arena.lockfileName]
        assert arena.lockfileName is not None and arena.lockfileName.startswith("tmp")
        assert len(arena.lockfileName) == 11
        info = os.stat(shm_dir / "work-arena-members" / members[0])
        # Readable by others, so another user's probe can lock it; writable by its owner only.
        assert info.st_mode & 0o777 == 0o644 & ~current_umask()
        assert not (shm_dir / "toil-mutex-work-arena-lock").exists()
    finally:
        assert list(arena.leave()) == [True]


def test_descriptors_steady_with_a_live_member(core: str, shm_dir: Path, no_fd_leak: None) -> None:
    ready = fork.Event()
    other = fork.Process(target=enter_and_wait, args=(str(shm_dir), ready))
    other.start()
    try:
        assert ready.wait(30)
        arena = toil_threading.LastProcessStandingArena(shm_dir, "work")
        for _ in range(100):
            arena.enter()
            assert list(arena.leave()) == []
    finally:
        other.kill()
        other.join()


def test_enter_twice_and_leave_unentered_are_refused(
    core: str, shm_dir: Path, no_fd_leak: None
) -> None:
    arena = toil_threading.LastProcessStandingArena(shm_dir, "work")
    with pytest.raises(RuntimeError):
        list(arena.leave())
    arena.enter()
    with pytest.raises(RuntimeError):
        arena.enter()
    assert list(arena.leave()) == [True]
    with pytest.raises(RuntimeError):
        list(arena.leave())
    assert os.listdir(shm_dir) == []


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "nul\0", "x" * 240])
def test_bad_arena_names_create_nothing(core: str, shm_dir: Path, name: str) -> None:
    with pytest.raises(ValueError, match="arena name"):
        toil_threading.LastProcessStandingArena(shm_dir, name)
    assert os.listdir(shm_dir) == []


def test_enter_timeout(core: str, shm_dir: Path, no_fd_leak: None) -> None:
    arena = toil_threading.LastProcessStandingArena(shm_dir, "work")
    with toil_threading.global_mutex(shm_dir, "work-arena-lock"):
        pid = os.fork()
        if pid == 0:
            try:
                arena.enter(timeout=0.2)
                os._exit(2)
            except TimeoutError:
                os._exit(0 if arena.lockfileFD is None else 3)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    arena.enter(timeout=5)
    assert list(arena.leave()) == [True]


def test_unremovable_members_dir_is_a_warning(
    core: str, shm_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    arena = toil_threading.LastProcessStandingArena(shm_dir, "work")
    arena.enter()
    (shm_dir / "work-arena-members" / ".keep").touch()  # hidden: not a member, blocks rmdir
    with caplog.at_level(logging.WARNING, logger="toil_threading"):
        assert list(arena.leave()) == [True]
    assert any("could not remove" in record.getMessage() for record in caplog.records)
    assert os.listdir(shm_dir / "work-arena-members") == [".keep"]


def test_missing_base_dir_is_a_clear_error(core: str, tmp_path: Path, no_fd_leak: None) -> None:
    arena = toil_threading.LastProcessStandingArena(tmp_path / "missing", "work")
    with pytest.raises(FileNotFoundError):
        arena.enter()
    assert arena.lockfileFD is None


MIXED_MEMBER = """
import os, random, sys, time, toil_threading
base_dir, rounds = sys.argv[1], int(sys.argv[2])
stuff = os.path.join(base_dir, "stuff")
cleanups = 0
for task in range(rounds):
    arena = toil_threading.LastProcessStandingArena(base_dir, "mixed")
    arena.enter()
    os.makedirs(stuff, exist_ok=True)
    mine = os.path.join(stuff, f"{os.getpid()}-{task}")
    with open(mine, "w") as handle:
        handle.write("x")
    time.sleep(random.uniform(0.001, 0.005))
    assert open(mine).read() == "x", "a live member's file was removed"
    for _ in arena.leave():
        cleanups += 1
        for name in os.listdir(stuff):
            os.unlink(os.path.join(stuff, name))
print(cleanups)
"""


def test_mixed_with_toils_own_arena(core: str, shm_dir: Path, toil_python: str) -> None:
    code = f"import sys\nsys.argv[1:] = {[str(shm_dir), '30']!r}\n" + MIXED_MEMBER
    runners = [
        run_toil(toil_python, code, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if index % 2
        else python_with_core(core, code, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for index in range(6)
    ]
    outputs = [runner.communicate(timeout=120) for runner in runners]
    for runner, (_, err) in zip(runners, outputs, strict=True):
        assert runner.returncode == 0, err
    assert sum(int(out) for out, _ in outputs) >= 1
    assert os.listdir(shm_dir / "stuff") == []
    assert sorted(os.listdir(shm_dir)) == ["stuff"]


def test_mutex_exclusion_with_toils_own_mutex(core: str, shm_dir: Path, toil_python: str) -> None:
    code = (
        "import os, sys, toil_threading\n"
        "base_dir = sys.argv[1]\n"
        "violations = 0\n"
        "for _ in range(200):\n"
        "    with toil_threading.global_mutex(base_dir, 'mixed'):\n"
        "        try:\n"
        "            potato = os.path.join(base_dir, 'potato')\n"
        "            fd = os.open(potato, os.O_CREAT | os.O_EXCL | os.O_WRONLY)\n"
        "        except FileExistsError:\n"
        "            violations += 1\n"
        "            continue\n"
        "        os.close(fd)\n"
        "        os.unlink(os.path.join(base_dir, 'potato'))\n"
        "print(violations)\n"
    )
    prefix = f"import sys\nsys.argv[1:] = [{str(shm_dir)!r}]\n"
    runners = [
        (
            run_toil(toil_python, prefix + code, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            if index % 2
            else python_with_core(
                core, prefix + code, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
        for index in range(4)
    ]
    outputs = [runner.communicate(timeout=300) for runner in runners]
    for runner, (out, err) in zip(runners, outputs, strict=True):
        assert runner.returncode == 0, err
        assert out.strip() == "0", "mutual exclusion violated between Toil and this package"
    assert os.listdir(shm_dir) == []
