"""LastProcessStandingArena: real processes, SIGKILL, descriptor counts, Toil's own module."""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
from pathlib import Path

import pytest
from conftest import current_umask, python_with_core
from workers import ARENA_MEMBER, HAMMER, expect_line, kill_all, report, start

import toil_threading
from toil_threading import _arena


@pytest.mark.parametrize("members,rounds", [(8, 40)])
def test_last_process_standing_cleans_up_everyones_files(
    core: str, lock_dir: Path, members: int, rounds: int
) -> None:
    workers = [
        start(ARENA_MEMBER, lock_dir, f"m{index}", rounds, core=core) for index in range(members)
    ]
    assert_cleaned_up(lock_dir, workers)


def assert_cleaned_up(base_dir: Path, members: list[subprocess.Popen[str]]) -> None:
    """Let the members finish: none found its files touched, and the last one out cleaned up
    everything (its files, the members' files, the directory, the mutex)."""
    try:
        reports = [report(member) for member in members]
    finally:
        kill_all(members)
    assert all(each["intact"] for each in reports), "a live member's file was removed"
    assert sum(each["cleanups"] for each in reports) >= 1
    assert os.listdir(base_dir / "stuff") == []
    assert sorted(os.listdir(base_dir)) == ["stuff"], "members or mutex left behind"


def enter_and_stay(core: str, base_dir: Path) -> subprocess.Popen[str]:
    """A member of the arena "pool" that stays inside until killed."""
    member = start(ARENA_MEMBER, base_dir, "stays", 1, "WAIT", core=core)
    expect_line(member, "entered")
    return member


def test_sigkilled_members_do_not_stop_the_cleanup(core: str, lock_dir: Path) -> None:
    doomed = [enter_and_stay(core, lock_dir) for _ in range(3)]
    members_dir = lock_dir / "pool-arena-members"
    assert len(os.listdir(members_dir)) == 3
    survivors = [toil_threading.LastProcessStandingArena(lock_dir, "pool") for _ in range(2)]
    for survivor in survivors:
        survivor.enter()
    kill_all(doomed)
    cleanups = [sum(1 for _ in survivor.leave()) for survivor in survivors]
    assert cleanups == [0, 1]
    assert not members_dir.exists(), "dead members' files or the directory were left"
    assert sorted(os.listdir(lock_dir)) == ["stuff"]


def test_body_runs_under_the_arena_mutex(core: str, shm_dir: Path) -> None:
    arena = toil_threading.LastProcessStandingArena(shm_dir, "pool")
    arena.enter()
    for _ in arena.leave():
        fd = os.open(shm_dir / "toil-mutex-pool-arena-lock", os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        newcomer = python_with_core(
            core,
            "import toil_threading\n"
            f"arena = toil_threading.LastProcessStandingArena({str(shm_dir)!r}, 'pool')\n"
            "try:\n"
            "    arena.enter(timeout=0.2)\n"
            "except TimeoutError:\n"
            "    print('kept out')\n",
            stdout=subprocess.PIPE,
        )
        assert newcomer.communicate(timeout=30)[0].strip() == "kept out"
    assert os.listdir(shm_dir) == []


def test_member_file_layout(core: str, shm_dir: Path) -> None:
    arena = toil_threading.LastProcessStandingArena(shm_dir, "pool")
    arena.enter()
    try:
        members = os.listdir(shm_dir / "pool-arena-members")
        assert members == [arena.lockfileName]
        assert arena.lockfileName is not None and arena.lockfileName.startswith("tmp")
        assert len(arena.lockfileName) == 11
        info = os.stat(shm_dir / "pool-arena-members" / members[0])
        # Its owner's alone (as Toil's are): no other user can open it to lock it.
        assert info.st_mode & 0o777 == 0o600 & ~current_umask()
        assert not (shm_dir / "toil-mutex-pool-arena-lock").exists()
    finally:
        assert list(arena.leave()) == [True]


def test_descriptors_steady_with_a_live_member(core: str, shm_dir: Path, no_fd_leak: None) -> None:
    other = enter_and_stay(core, shm_dir)
    try:
        arena = toil_threading.LastProcessStandingArena(shm_dir, "pool")
        for _ in range(100):
            arena.enter()
            assert list(arena.leave()) == []
    finally:
        kill_all([other])


def test_enter_twice_and_leave_unentered_are_refused(
    core: str, shm_dir: Path, no_fd_leak: None
) -> None:
    arena = toil_threading.LastProcessStandingArena(shm_dir, "pool")
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
    arena = toil_threading.LastProcessStandingArena(shm_dir, "pool")
    with toil_threading.global_mutex(shm_dir, "pool-arena-lock"):
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
    arena = toil_threading.LastProcessStandingArena(shm_dir, "pool")
    arena.enter()
    (shm_dir / "pool-arena-members" / ".keep").touch()  # hidden: not a member, blocks rmdir
    with caplog.at_level(logging.WARNING, logger="toil_threading"):
        assert list(arena.leave()) == [True]
    assert any("could not remove" in record.getMessage() for record in caplog.records)
    assert os.listdir(shm_dir / "pool-arena-members") == [".keep"]


def test_an_interrupted_entry_removes_the_members_directory_it_made(
    core: str, shm_dir: Path, no_fd_leak: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C after the entry made the members directory, before its member's claim: the
    directory goes again, the arena's mutex is free, no descriptor stays open."""

    def interrupted(members: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_arena, "_keep_members_apart", interrupted)
    arena = toil_threading.LastProcessStandingArena(shm_dir, "pool")
    with pytest.raises(KeyboardInterrupt):
        arena.enter()
    assert (os.listdir(shm_dir), arena.lockfileFD) == ([], None)
    monkeypatch.undo()
    arena.enter(timeout=5)
    assert list(arena.leave()) == [True]


def test_missing_base_dir_is_a_clear_error(core: str, tmp_path: Path, no_fd_leak: None) -> None:
    arena = toil_threading.LastProcessStandingArena(tmp_path / "missing", "work")
    with pytest.raises(FileNotFoundError):
        arena.enter()
    assert arena.lockfileFD is None


def test_mixed_with_toils_own_arena(core: str, shm_dir: Path, toil_python: str) -> None:
    members = [
        start(ARENA_MEMBER, shm_dir, f"m{index}", 30, **which(core, toil_python, index))
        for index in range(6)
    ]
    assert_cleaned_up(shm_dir, members)


def test_mutex_exclusion_with_toils_own_mutex(core: str, shm_dir: Path, toil_python: str) -> None:
    hammers = [start(HAMMER, shm_dir, 200, **which(core, toil_python, index)) for index in range(4)]
    try:
        reports = [report(hammer) for hammer in hammers]
    finally:
        kill_all(hammers)
    assert [(each["violations"], each["exceptions"]) for each in reports] == [(0, {})] * 4, (
        "mutual exclusion violated between Toil and this package"
    )
    assert os.listdir(shm_dir) == []


def which(core: str, toil_python: str, index: int) -> dict[str, str]:
    """Every other worker runs Toil's own module, the others this package on core."""
    return {"toil_python": toil_python} if index % 2 else {"core": core}
