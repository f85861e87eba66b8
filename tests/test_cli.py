"""The toil-threading command, run as operators run it: a subprocess on the installed package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    UNLISTABLE,
    blocked_waiters,
    linux_only,
    python_with_core,
    run_cli,
    unlistable,
    wait_until_blocked,
)
from workers import EVERY_KIND, said, start

import toil_threading
from toil_threading import _cli

pytestmark = linux_only  # inspect names holders from /proc/locks


def inspect_json(core: str, directory: Path, *flags: str) -> tuple[int, Any]:
    """(exit status, parsed report) of `inspect --json`."""
    done = run_cli(core, "inspect", "--json", *flags, directory)
    assert done.stderr == ""
    return done.returncode, json.loads(done.stdout)


def table_row(table: str, kind: str, name: str) -> list[str]:
    """The cells of the table row for that kind and name (the command split into words)."""
    [row] = [line.split() for line in table.splitlines() if line.split()[:2] == [kind, name]]
    return row


def files_under(directory: Path) -> set[Path]:
    return {path for path in directory.rglob("*") if path.is_file()}


def start_holder(core: str, directory: Path, mutex: str) -> tuple[subprocess.Popen[str], str, str]:
    """A child holding the mutex, a member of the arena "pool" and a process name in directory.

    It lets go when its stdin is closed.  Returns it, its member's file name and its name.
    """
    child = start(EVERY_KIND, directory, mutex, core=core)
    member, name = said(child).split()
    return child, member, name


def let_go(child: subprocess.Popen[str]) -> None:
    child.communicate("", timeout=30)


def test_held_mutex_names_its_holder(core: str, lock_dir: Path) -> None:
    holder, _, _ = start_holder(core, lock_dir, "jobs")
    try:
        table = run_cli(core, "inspect", lock_dir)
        assert table.returncode == 1, table.stderr
        row = table_row(table.stdout, "mutex", "jobs")
        assert row[2:5] == ["held", str(holder.pid), sys.executable]
        # The command is cut to a readable width in the table; --json has it whole.
        command = table.stdout.splitlines()[1].split(None, 4)[4]
        assert len(command) == _cli.COMMAND_WIDTH and command.endswith("...")

        status, report = inspect_json(core, lock_dir)
        assert status == 1 and report["held"] is True
        [mutex] = report["mutexes"]
        assert (mutex["name"], mutex["state"], mutex["pid"]) == ("jobs", "held", holder.pid)
        assert mutex["path"] == str(lock_dir / "toil-mutex-jobs")
        assert mutex["command"][0] == sys.executable
        assert any("global_mutex" in argument for argument in mutex["command"])
    finally:
        let_go(holder)
    # Released: the mutex file is gone, and the member it never left is dead.
    status, report = inspect_json(core, lock_dir)
    assert status == 0 and report["held"] is False and report["mutexes"] == []
    assert report["arenas"][0]["dead"] == 1


def test_free_leftover_mutex_is_shown_free_and_never_removed(core: str, shm_dir: Path) -> None:
    (shm_dir / "toil-mutex-stale").touch()
    table = run_cli(core, "inspect", shm_dir)
    assert table.returncode == 0
    assert table_row(table.stdout, "mutex", "stale") == ["mutex", "stale", "free"]
    for flags in ((), ("--clean",)):
        status, report = inspect_json(core, shm_dir, *flags)
        assert status == 0
        [mutex] = report["mutexes"]
        assert mutex == {
            "name": "stale",
            "path": str(shm_dir / "toil-mutex-stale"),
            "state": "free",
            "pid": None,
            "command": None,
            "not_removed": None,
        }
        assert (shm_dir / "toil-mutex-stale").exists()


def test_live_and_dead_members_and_names(core: str, lock_dir: Path) -> None:
    live, live_member, live_name = start_holder(core, lock_dir, "live")
    dead, dead_member, dead_name = start_holder(core, lock_dir, "dead")
    dead.kill()
    dead.wait()
    try:
        before = files_under(lock_dir)
        table = run_cli(core, "inspect", lock_dir)
        assert table.returncode == 1
        assert table_row(table.stdout, "arena", "pool") == [
            "arena",
            "pool",
            "1",
            "alive,",
            "1",
            "dead",
        ]
        assert table_row(table.stdout, "member", f"pool/{live_member}")[2:4] == [
            "alive",
            str(live.pid),
        ]
        assert table_row(table.stdout, "member", f"pool/{dead_member}")[2:] == ["dead"]
        assert table_row(table.stdout, "name", live_name)[2:4] == ["alive", str(live.pid)]
        assert table_row(table.stdout, "name", dead_name)[2:] == ["dead"]

        status, report = inspect_json(core, lock_dir)
        assert status == 1
        [arena] = report["arenas"]
        assert (arena["name"], arena["mutex"]) == ("pool", "pool-arena-lock")
        assert (arena["alive"], arena["dead"]) == (1, 1)
        assert {member["name"]: member["state"] for member in arena["members"]} == {
            live_member: "alive",
            dead_member: "dead",
        }
        names = {name["name"]: name["state"] for name in report["names"]}
        assert names == {live_name: "alive", dead_name: "dead"}
        assert files_under(lock_dir) == before, "inspect without --clean must not delete anything"

        status, report = inspect_json(core, lock_dir, "--clean")
        assert status == 1
        [arena] = report["arenas"]
        assert (arena["alive"], arena["dead"], arena["removed"]) == (1, 0, 1)
        names = {name["name"]: name["state"] for name in report["names"]}
        assert names == {live_name: "alive", dead_name: "removed"}
        dead_files = {lock_dir / "pool-arena-members" / dead_member, lock_dir / dead_name}
        assert files_under(lock_dir) == before - dead_files
        # The dead holder's mutex file is a free leftover: --clean keeps it.
        assert (lock_dir / "toil-mutex-dead").exists()
    finally:
        let_go(live)


def test_inspecting_does_not_disturb_a_waiter(core: str, shm_dir: Path) -> None:
    holder, _, _ = start_holder(core, shm_dir, "jobs")
    waiter = python_with_core(
        core,
        "import toil_threading as t\n"
        f"with t.global_mutex({str(shm_dir)!r}, 'jobs'):\n"
        "    print('acquired', flush=True)\n",
        stdout=subprocess.PIPE,
    )
    try:
        wait_until_blocked(waiter.pid)
        for flags in ((), ("--clean",)):
            status, report = inspect_json(core, shm_dir, *flags)
            assert status == 1
            [mutex] = report["mutexes"]
            assert (mutex["name"], mutex["pid"]) == ("jobs", holder.pid)
        assert waiter.poll() is None and waiter.pid in blocked_waiters()
        let_go(holder)
        out, _ = waiter.communicate(timeout=30)
        assert out == "acquired\n" and waiter.returncode == 0
    finally:
        holder.kill()
        waiter.kill()
        holder.wait()
        waiter.wait()


def test_empty_directory(core: str, shm_dir: Path) -> None:
    done = run_cli(core, "inspect", shm_dir)
    assert (done.returncode, done.stdout) == (
        0,
        f"{shm_dir}: no mutexes, arenas or process names\n",
    )


def test_runs_on_the_chosen_core(core: str) -> None:
    done = run_cli(core, "--version")
    assert done.returncode == 0
    assert done.stdout.endswith(
        {"compiled": "(compiled core)\n", "pure": "(pure-Python core)\n"}[core]
    )


def test_cpus(core: str) -> None:
    expected = toil_threading.cpu_count()
    plain = run_cli(core, "cpus")
    assert (plain.returncode, plain.stdout) == (0, f"{expected}\n")

    explained = run_cli(core, "cpus", "--explain")
    lines = explained.stdout.splitlines()
    assert lines[0].startswith(f"cpu_count: {expected} ")
    sources = [line.split()[0] for line in lines[2:]]
    assert sources[:2] == ["machine", "affinity"]

    report = json.loads(run_cli(core, "cpus", "--json").stdout)
    assert report["cpus"] == expected
    assert [limit["source"] for limit in report["limits"]][:2] == ["machine", "affinity"]


def test_fs_on_tmpfs(core: str) -> None:
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm on this machine")
    table = run_cli(core, "fs", "/dev/shm")
    assert table.returncode == 0, table.stderr
    assert table_row(table.stdout, "filesystem", "tmpfs") == [
        "filesystem",
        "tmpfs",
        "(mounted",
        "as",
        "tmpfs)",
    ]
    assert table_row(table.stdout, "strategy", "flock") == ["strategy", "flock"]
    done = run_cli(core, "fs", "--json", "/dev/shm")
    assert done.returncode == 0
    report = json.loads(done.stdout)
    assert (report["type"], report["magic"], report["flock"], report["posix"]) == (
        "tmpfs",
        "0x01021994",
        "local",
        "local",
    )
    assert report["mount_point"] == "/dev/shm" and report["strategy"] == "flock"


def test_fs_on_the_test_disk(core: str, tmp_path: Path) -> None:
    done = run_cli(core, "fs", "--json", tmp_path)
    report = json.loads(done.stdout)
    assert report["magic"] == f"0x{toil_threading._impl.core.fs_magic(str(tmp_path)):08x}"
    assert report["strategy"] != "refused" and report["reason"]
    assert done.returncode == 0


def test_fs_refuses_ceph(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # No Ceph here: the core is made to report Ceph's statfs number, which decides.
    monkeypatch.setattr(toil_threading._impl.core, "fs_magic", lambda target: 0x00C36400)
    assert _cli.main(["fs", "--json", str(tmp_path)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["filesystem"], report["strategy"]) == ("Ceph", "refused")
    assert "Ceph" in report["reason"]


@pytest.mark.parametrize("case", ["missing", "file", "unreadable"])
def test_errors_are_one_line(core: str, case: str, tmp_path: Path) -> None:
    target, wrapper = unlistable(tmp_path, case)
    done = run_cli(core, "inspect", target, wrapper=wrapper)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"toil-threading: error: {target}: {UNLISTABLE[case]}\n"


def test_console_script_and_help(core: str) -> None:
    script = Path(sys.executable).parent / "toil-threading"
    assert script.exists(), "the toil-threading console script is not installed beside this Python"
    done = run_cli(core, "--help", command=[str(script)])
    assert done.returncode == 0
    assert done.stdout.startswith("usage: toil-threading ")
    for part in ("inspect", "cpus", "fs", "examples:", "exit status:"):
        assert part in done.stdout
    assert run_cli(core, "fs", "/", command=[str(script)]).stdout.startswith("path          /\n")


@pytest.mark.parametrize("subcommand", ["inspect", "cpus", "fs", "verify"])
def test_a_bad_option_prints_that_subcommands_usage(
    core: str, subcommand: str, tmp_path: Path
) -> None:
    positional = [] if subcommand == "cpus" else [tmp_path]
    done = run_cli(core, subcommand, *positional, "--bogus")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(f"usage: toil-threading {subcommand} ")
    unrecognized = f"toil-threading {subcommand}: error: unrecognized arguments: --bogus\n"
    assert done.stderr.endswith(unrecognized)


def test_errors_under_json_are_one_line_on_stderr(core: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    for flags in (("--json",), ()):
        done = run_cli(core, "inspect", *flags, missing)
        assert (done.returncode, done.stdout) == (2, "")
        assert done.stderr == f"toil-threading: error: {missing}: No such file or directory\n"
