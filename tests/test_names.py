"""Process names: alive while their owner lives, across forks, execs, PID namespaces and Toil."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    current_umask,
    fds_open_on,
    linux_only,
    python_with_core,
    run_toil,
    skip_or_fail,
)
from workers import NAME_OWNER, said, start

import toil_threading
from toil_threading._lockability import lock_flags_for
from toil_threading._protocol import ABSENT, ALIVE, DEAD, REMOVED


@pytest.fixture(autouse=True)
def fresh_names() -> Iterator[None]:
    """Each test starts and ends with this process owning no names."""
    toil_threading.destroy_all_process_names()
    yield
    toil_threading.destroy_all_process_names()


def named_owner(core: str, base_dir: Path, **where: str) -> tuple[subprocess.Popen[str], str]:
    """A process owning a name in base_dir (on core, or Toil's with toil_python), and it."""
    owner = start(NAME_OWNER, base_dir, **(where or {"core": core}))
    return owner, said(owner)


def test_name_is_stable_and_on_disk(core: str, shm_dir: Path, tmp_path: Path) -> None:
    name = toil_threading.get_process_name(shm_dir)
    assert toil_threading.get_process_name(str(shm_dir)) == name
    assert name.startswith("tmp") and len(name) == 11
    info = (shm_dir / name).stat()
    # Readable by others, so another user's probe can lock it; writable by its owner only.
    # Its owner's alone (as Toil's are): no other user can open it to lock it.
    assert stat.S_IMODE(info.st_mode) == 0o600 & ~current_umask()
    assert toil_threading.current_process_name_for[str(shm_dir)] == name
    assert toil_threading.get_process_name(tmp_path) != name
    assert toil_threading.process_name_exists(shm_dir, name)


def test_alive_while_owner_lives_then_dead_and_removed(core: str, lock_dir: Path) -> None:
    owner, name = named_owner(core, lock_dir)
    try:
        assert (lock_dir / name).exists()
        assert toil_threading.process_name_exists(lock_dir, name)
        assert toil_threading.process_name_exists(lock_dir, name), "polling must not kill it"
        owner.kill()
        owner.wait()
        assert not toil_threading.process_name_exists(lock_dir, name)
        assert not (lock_dir / name).exists()
    finally:
        owner.kill()
        owner.wait()


def test_name_files_are_removed_at_exit(core: str, shm_dir: Path) -> None:
    owner, name = named_owner(core, shm_dir)
    owner.communicate("\n", timeout=30)
    assert owner.returncode == 0
    assert not (shm_dir / name).exists()


def test_distinct_processes_get_distinct_names(core: str, shm_dir: Path) -> None:
    owners, names = map(list, zip(*(named_owner(core, shm_dir) for _ in range(4)), strict=True))
    try:
        names.append(toil_threading.get_process_name(shm_dir))
        assert len(set(names)) == 5
        assert all(toil_threading.process_name_exists(shm_dir, name) for name in names)
    finally:
        for owner in owners:
            owner.kill()
            owner.wait()


def test_unknown_name_does_not_exist(core: str, shm_dir: Path, no_fd_leak: None) -> None:
    assert not toil_threading.process_name_exists(shm_dir, "tmpnothere")
    assert os.listdir(shm_dir) == []


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "nul\0"])
def test_bad_names_are_refused(core: str, shm_dir: Path, name: str) -> None:
    with pytest.raises(ValueError):
        toil_threading.process_name_exists(shm_dir, name)


def test_missing_base_dir(core: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        toil_threading.get_process_name(tmp_path / "missing")
    assert toil_threading.current_process_name_for == {}


def test_name_of_a_cleaned_directory_is_replaced(
    core: str, tmp_path: Path, no_fd_leak: None
) -> None:
    base = tmp_path / "work"
    base.mkdir()
    first = toil_threading.get_process_name(base)
    shutil.rmtree(base)
    base.mkdir()
    second = toil_threading.get_process_name(base)
    assert second != first
    assert toil_threading.process_name_exists(base, second)
    toil_threading.destroy_all_process_names()


@linux_only
def test_forked_child_has_its_own_name(core: str, shm_dir: Path) -> None:
    parent_name = toil_threading.get_process_name(shm_dir)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            inherited = fds_open_on(shm_dir / parent_name)
            mine = toil_threading.get_process_name(shm_dir)
            ok = (
                inherited == []
                and mine != parent_name
                and toil_threading.process_name_exists(shm_dir, parent_name)
                and toil_threading.process_name_exists(shm_dir, mine)
            )
            os.write(write_end, f"{mine} {ok}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child_name, ok = pipe.read().split()
    os.waitpid(pid, 0)
    assert ok == "True"
    assert child_name != parent_name
    assert toil_threading.process_name_exists(shm_dir, parent_name), (
        "the child unlocked the parent's name"
    )
    assert not toil_threading.process_name_exists(shm_dir, child_name)


def test_parent_name_dies_with_parent_though_its_fork_lives(core: str, shm_dir: Path) -> None:
    # The parent takes a name, forks a long-lived child, then is killed: its name must die.
    parent = python_with_core(
        core,
        "import os, sys, time, toil_threading\n"
        f"print(toil_threading.get_process_name({str(shm_dir)!r}), flush=True)\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    print(os.getpid(), flush=True)  # after the fork hooks have run\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(60)\n",
        stdout=subprocess.PIPE,
    )
    child_pid = 0
    try:
        name = said(parent)
        child_pid = int(said(parent))
        assert toil_threading.process_name_exists(shm_dir, name)
        parent.kill()
        parent.wait()
        os.kill(child_pid, 0)  # the fork is still alive
        assert not toil_threading.process_name_exists(shm_dir, name)
    finally:
        parent.kill()
        parent.wait()
        if child_pid:
            os.kill(child_pid, signal.SIGKILL)


@linux_only
def test_execd_process_does_not_keep_its_name(core: str, shm_dir: Path) -> None:
    owner = python_with_core(
        core,
        "import os, toil_threading\n"
        f"print(toil_threading.get_process_name({str(shm_dir)!r}), flush=True)\n"
        "os.execv('/bin/sleep', ['sleep', '60'])\n",
        stdout=subprocess.PIPE,
    )
    try:
        name = said(owner)
        deadline = time.monotonic() + 10
        # Done exec'ing once sleep(1) itself runs and blocks (state S): the kernel sets
        # the new name before it closes the close-on-exec descriptors.
        while not (
            Path(f"/proc/{owner.pid}/comm").read_text().strip() == "sleep"
            and Path(f"/proc/{owner.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "S"
        ):
            assert time.monotonic() < deadline, "the owner never exec'd"
            time.sleep(0.01)
        assert owner.poll() is None
        assert not toil_threading.process_name_exists(shm_dir, name)
    finally:
        owner.kill()
        owner.wait()


@linux_only
def test_names_in_separate_pid_namespaces(core: str, shm_dir: Path) -> None:
    unshare = shutil.which("unshare")
    if (
        unshare is None
        or subprocess.run([unshare, "--pid", "--fork", "true"], capture_output=True).returncode != 0
    ):
        skip_or_fail("needs unshare(1) and the right to make PID namespaces (root)")
    code = (
        "import os, sys, toil_threading\n"
        f"print(os.getpid(), toil_threading.get_process_name({str(shm_dir)!r}), flush=True)\n"
        "sys.stdin.readline()\n"
    )
    from conftest import core_prelude

    owners = [
        subprocess.Popen(
            [
                "unshare",
                "--pid",
                "--fork",
                "--kill-child",
                sys.executable,
                "-c",
                core_prelude(core) + code,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd="/",
        )
        for _ in range(2)
    ]
    try:
        lines = [owner.stdout.readline().split() for owner in owners]  # type: ignore[union-attr]
        assert [pid for pid, _ in lines] == ["1", "1"], "both should be PID 1 in their namespace"
        names = [name for _, name in lines]
        assert names[0] != names[1]
        assert all(toil_threading.process_name_exists(shm_dir, name) for name in names)
        owners[0].communicate("\n", timeout=30)
        assert not toil_threading.process_name_exists(shm_dir, names[0])
        assert toil_threading.process_name_exists(shm_dir, names[1])
    finally:
        for owner in owners:
            owner.kill()
            owner.wait()


def test_toil_sees_our_names_and_we_see_toils(core: str, shm_dir: Path, toil_python: str) -> None:
    toil_owner, toil_name = named_owner(core, shm_dir, toil_python=toil_python)
    ours, our_name = named_owner(core, shm_dir)
    try:
        assert toil_threading.process_name_exists(shm_dir, toil_name)

        def toil_says(name: str) -> str:
            poll = run_toil(
                toil_python,
                "import toil_threading\n"
                f"print(toil_threading.process_name_exists({str(shm_dir)!r}, {name!r}))",
                stdout=subprocess.PIPE,
            )
            return poll.communicate(timeout=60)[0].strip()

        assert toil_says(our_name) == "True"
        ours.kill()
        ours.wait()
        assert toil_says(our_name) == "False"
        assert not (shm_dir / our_name).exists()
        toil_owner.kill()
        toil_owner.wait()
        assert not toil_threading.process_name_exists(shm_dir, toil_name)
        assert not (shm_dir / toil_name).exists()
    finally:
        for owner in (toil_owner, ours):
            owner.kill()
            owner.wait()


def test_read_only_probe_leaves_dead_files(core: str, shm_dir: Path, no_fd_leak: None) -> None:
    core_module = toil_threading._impl.core
    owner, name = named_owner(core, shm_dir)
    directory = core_module.Directory(str(shm_dir))
    try:
        assert core_module.probe(directory, name, False, lock_flags_for) == ALIVE
        owner.kill()
        owner.wait()
        assert core_module.probe(directory, name, False, lock_flags_for) == DEAD
        assert (shm_dir / name).exists(), "a read-only probe removed a file"
        assert core_module.probe(directory, name, True, lock_flags_for) == REMOVED
        assert not (shm_dir / name).exists()
        assert core_module.probe(directory, name, False, lock_flags_for) == ABSENT
    finally:
        directory.close()
        owner.kill()
        owner.wait()
