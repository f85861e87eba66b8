"""The toil-threading command against hostile and careless input: what it prints, what
it leaves on disk and how it ends, run as operators run it (a subprocess on the
installed package) unless a test needs another user.

Names, command lines, file contents and host names come from disk and /proc, where
anyone may have written anything: the tables show them escaped, --json stays strict
JSON, errors are one line on stderr with exit status 2, and a reader that goes away
ends the command without a word.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from children import NOBODY, in_child
from conftest import (
    CLI,
    core_environment,
    linux_only,
    needs_root,
    run_cli,
    skip_or_fail,
    start_verify_holder,
)

from toil_threading import _cli

pytestmark = linux_only

CORPUS = Path(__file__).with_name("data") / "cpu"
SCRATCH = "toil-threading-verify"
# Exit statuses, as --help and the README document them.
NOT_JUDGED, INTERRUPTED, CLOSED_PIPE = 3, 130, 141
# What a terminal acts on or reorders: control characters other than the newline that ends
# each line, DEL, and the bidirectional marks, embeddings, overrides and isolates.
STEERING = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def strict_json(text: str) -> Any:
    """text parsed as JSON proper: NaN and the infinities are not JSON."""

    def refuse(name: str) -> None:
        pytest.fail(f"{name} in the JSON printed: {text!r}")

    return json.loads(text, parse_constant=refuse)


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a failed command said on stderr (exit 2, nothing on stdout), after
    its "toil-threading: error: "."""
    assert (done.returncode, done.stdout) == (2, ""), done
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    start = "toil-threading: error: "
    assert done.stderr.startswith(start), done.stderr
    return done.stderr[len(start) : -1]


def run_cli_in(
    core: str, cwd: Path | None, *args: str | Path, **popen: Any
) -> subprocess.CompletedProcess[str]:
    """The command line run in working directory cwd (None: this process's own)."""
    return subprocess.run(
        [*CLI, *map(str, args)],
        cwd=cwd,
        env=core_environment(core),
        text=True,
        timeout=60,
        check=False,
        **({"stdout": subprocess.PIPE, "stderr": subprocess.PIPE} | popen),
    )


@contextlib.contextmanager
def holding(path: Path, argv: list[str]) -> Iterator[int]:
    """A process that holds an exclusive flock on path (made if missing) and runs with
    the command line argv (its argv[0] included); yields its PID."""
    code = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.set_inheritable(fd, True)\n"
        "os.execv(sys.argv[2], sys.argv[3:])\n"  # the lock stays with the same PID
    )
    sleep = shutil.which("sleep")
    assert sleep is not None
    child = subprocess.Popen([sys.executable, "-c", code, str(path), sleep, *argv])
    try:
        deadline = time.monotonic() + 30
        while not cmdline_is(child.pid, argv):
            assert time.monotonic() < deadline and child.poll() is None, "the holder never ran"
            time.sleep(0.01)
        yield child.pid
    finally:
        child.kill()
        child.wait()


def cmdline_is(pid: int, argv: list[str]) -> bool:
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        return cmdline.read() == b"".join(os.fsencode(arg) + b"\0" for arg in argv)


# 1. Every string from disk or /proc is shown escaped.

# A mutex name that, printed as it is, retitles the terminal, clears it, returns to the
# start of the line and forges a row of its own, reversed, with C1 controls and DEL.
FORGING_NAME = "x\x1b]0;owned\x07\x1b[2J\x1b[H\rmutex  forged  free\n\u202eevil\\x1b \x9b31m\x7f"
FORGING_NAME_SHOWN = (
    "x\\x1b]0;owned\\x07\\x1b[2J\\x1b[H\\x0dmutex  forged  free\\x0a\\u202eevil\\\\x1b"
    " \\x9b31m\\x7f"
)
# A command line (argv[0]) with the same intent (without the whitespace controls, which a
# table row joins as spaces): an OSC title, a clear, an isolate, a right-to-left override.
FORGING_ARGUMENT = "\x1b]0;owned\x07\x1b[2J\u2067\u202e\u200fX\\"
FORGING_ARGUMENT_SHOWN = "\\x1b]0;owned\\x07\\x1b[2J\\u2067\\u202e\\u200fX\\\\"


def test_inspect_shows_names_and_command_lines_escaped(core: str, shm_dir: Path) -> None:
    with holding(shm_dir / f"toil-mutex-{FORGING_NAME}", [FORGING_ARGUMENT, "600"]) as pid:
        table = run_cli(core, "inspect", shm_dir)
        assert (table.returncode, table.stderr) == (1, "")
        assert not STEERING.search(table.stdout), table.stdout
        header, row = table.stdout.splitlines()  # no forged row
        assert header.split() == ["KIND", "NAME", "STATE", "PID", "COMMAND"]
        assert row == f"mutex  {FORGING_NAME_SHOWN}  held   {pid}  {FORGING_ARGUMENT_SHOWN} 600"

        done = run_cli(core, "inspect", "--json", shm_dir)
        assert (done.returncode, done.stderr) == (1, "")
        assert not STEERING.search(done.stdout)
        [mutex] = strict_json(done.stdout)["mutexes"]
        assert (mutex["name"], mutex["pid"]) == (FORGING_NAME, pid)
        assert mutex["command"] == [FORGING_ARGUMENT, "600"]


def test_inspect_shows_a_backslash_escaped_too(core: str, shm_dir: Path) -> None:
    # A name spelling an escape and a name holding the byte it spells look different.
    os.close(os.open(os.fsencode(shm_dir) + b"/toil-mutex-a\xe9", os.O_CREAT | os.O_WRONLY))
    (shm_dir / "toil-mutex-a\\xe9").touch()
    table = run_cli(core, "inspect", shm_dir)
    assert table.returncode == 0, table.stderr
    names = [line.split()[1] for line in table.stdout.splitlines()[1:]]
    assert sorted(names) == ["a\\\\xe9", "a\\xe9"]


def test_cpus_explain_shows_file_contents_escaped(core: str, tmp_path: Path) -> None:
    # A captured system whose host name (quoted in the Slurm row) steers the terminal and
    # is not UTF-8.
    root = tmp_path / "captured"
    shutil.copytree(CORPUS / "slurm-step-c4-no-constraincores", root)
    (root / "proc/sys/kernel/hostname").write_bytes(
        b"gpu-\x1b]0;owned\x07\xe9" + "\u202e7".encode() + b"\n"
    )
    table = run_cli(core, "cpus", "--explain", "--root", root)
    assert (table.returncode, table.stderr) == (0, "")
    assert not STEERING.search(table.stdout), table.stdout
    [slurm] = [line for line in table.stdout.splitlines() if line.startswith("slurm ")]
    assert slurm.endswith(
        "SLURMD_NODENAME=gpu-a7 is not this host (gpu-\\x1b]0;owned\\x07\\xe9\\u202e7):"
        " the variables came from elsewhere"
    )
    done = run_cli(core, "cpus", "--json", "--root", root)
    assert (done.returncode, done.stderr) == (0, "")
    [detail] = [
        limit["detail"]
        for limit in strict_json(done.stdout)["limits"]
        if limit["source"] == "slurm"
    ]
    assert "(gpu-\x1b]0;owned\x07\\xe9\u202e7)" in detail


def test_fs_and_errors_show_the_path_escaped(core: str, shm_dir: Path) -> None:
    steering = shm_dir / "a\x1b[2J\u202eb"
    steering.mkdir()
    table = run_cli(core, "fs", steering)
    assert (table.returncode, table.stderr) == (0, "")
    assert not STEERING.search(table.stdout)
    assert table.stdout.startswith(f"path          {shm_dir}/a\\x1b[2J\\u202eb\n")

    missing = shm_dir / "gone\x1b[2J"
    said = one_error_line(run_cli(core, "inspect", missing))
    assert said == f"{shm_dir}/gone\\x1b[2J: No such file or directory"


def test_verify_shows_the_holders_host_escaped(core: str, shm_dir: Path) -> None:
    # A record verify could have written, naming a host that steers the terminal; nobody
    # holds its file, so the locks did not exclude: unsafe.
    (shm_dir / SCRATCH).write_text(json.dumps(record(host="\x1b]0;owned\x07node\u202e")))
    table = run_cli(core, "verify", shm_dir)
    assert (table.returncode, table.stderr) == (1, "")
    assert not STEERING.search(table.stdout)
    assert table.stdout.splitlines()[0] == "holder        pid 1 on \\x1b]0;owned\\x07node\\u202e"
    assert (shm_dir / SCRATCH).exists(), "verify removed a holder's file"


# 2. and 3. JSON stays JSON; every error is one line on stderr, exit 2.


def test_an_error_under_json_is_one_line_on_stderr(core: str, shm_dir: Path) -> None:
    missing = shm_dir / "missing"
    for args in (("inspect", missing), ("fs", missing), ("verify", missing)):
        said = one_error_line(run_cli(core, args[0], "--json", *args[1:]))
        assert said == f"{missing}: No such file or directory"


@pytest.mark.parametrize(
    "args",
    [
        ("inspect", "--clean", ""),
        ("inspect", ""),
        ("fs", ""),
        ("verify", ""),
        ("verify", "", "--hold", "1"),
        ("cpus", "--root", ""),
    ],
)
def test_an_empty_path_is_refused(core: str, tmp_path: Path, args: tuple[str, ...]) -> None:
    dead = tmp_path / "tmpdeadname"  # a dead process name's file: what --clean removes
    dead.touch()
    done = run_cli_in(core, tmp_path, *args)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(f"usage: toil-threading {args[0]} ")
    argument = {"inspect": "DIR", "fs": "PATH", "verify": "DIR", "cpus": "--root"}[args[0]]
    assert done.stderr.endswith(
        f"toil-threading {args[0]}: error: argument {argument}:"
        " the path must not be empty (use '.' for the working directory)\n"
    )
    assert sorted(os.listdir(tmp_path)) == ["tmpdeadname"]


@pytest.mark.parametrize("case", ["missing", "file"])
def test_cpus_root_that_is_no_directory_is_an_error(core: str, tmp_path: Path, case: str) -> None:
    # explain_cpu_count(root) raises FileNotFoundError or NotADirectoryError for such a
    # root (a captured system with nothing under it would otherwise answer 1).
    root = tmp_path / case
    if case == "file":
        root.write_text("not a captured system\n")
    done = run_cli(core, "cpus", "--root", root)
    said = one_error_line(done)
    assert str(root) in said
    assert said.endswith({"missing": "No such file or directory", "file": "Not a directory"}[case])


def test_an_unwritable_stdout_is_one_error(core: str, shm_dir: Path) -> None:
    # /dev/full: every write fails with ENOSPC; said once, with no complaint at exit.
    (shm_dir / "toil-mutex-m").touch()
    with open("/dev/full", "w") as full:
        done = run_cli_in(core, None, "inspect", shm_dir, stdout=full, stderr=subprocess.PIPE)
    assert done.returncode == 2
    assert done.stderr == "toil-threading: error: No space left on device\n"


# 3. A reader that goes away ends the command without a word.


@pytest.fixture
def crowded(shm_dir: Path) -> Path:
    """A directory whose inspection is longer than a pipe holds (64 KiB)."""
    for number in range(1500):
        (shm_dir / f"toil-mutex-{number:04}-{'m' * 60}").touch()
    return shm_dir


COMMANDS = {
    "inspect": ("inspect", "{dir}"),
    "inspect-json": ("inspect", "--json", "{dir}"),
    "cpus": ("cpus", "--explain"),
    "fs": ("fs", "{dir}"),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_closed_pipe_ends_quietly(core: str, crowded: Path, command: str) -> None:
    # Its reader closed before it writes anything.
    read_end, write_end = os.pipe()
    os.close(read_end)
    args = [arg.format(dir=crowded) for arg in COMMANDS[command]]
    try:
        done = run_cli_in(core, None, *args, stdout=write_end, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (CLOSED_PIPE, "")


def test_a_reader_that_leaves_halfway_ends_it_quietly(core: str, crowded: Path) -> None:
    # As `toil-threading inspect DIR | head -c1`: the table fills the pipe, then its
    # reader goes.
    command = subprocess.Popen(
        [*CLI, "inspect", str(crowded)],
        env=core_environment(core),
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert command.stdout is not None and command.stderr is not None
    assert command.stdout.read(1) == b"K"
    command.stdout.close()
    assert command.wait(timeout=60) == CLOSED_PIPE
    assert command.stderr.read() == b""
    command.stderr.close()


def test_a_closed_stdout_prints_nothing_and_exits_as_usual(core: str, shm_dir: Path) -> None:
    closed = ("sh", "-c", 'exec "$@" >&-', "sh")
    (shm_dir / "tmpdeadname").touch()
    done = run_cli(core, "inspect", "--clean", shm_dir, wrapper=closed)
    assert (done.returncode, done.stderr) == (0, "")
    assert os.listdir(shm_dir) == [], "the command did not run to its end"


# --clean reports what it could not remove, and why, and goes on.

DEAD_NAMES = ("tmpaaaaaaaa", "tmpzzzzzzzz")


def test_clean_on_a_read_only_mount_reports_each_file(core: str, shm_dir: Path) -> None:
    needs_root()
    unshare = shutil.which("unshare")
    if unshare is None:
        skip_or_fail("unshare(1) is missing: cannot mount read-only in a namespace of its own")
    for name in DEAD_NAMES:
        (shm_dir / name).touch()
    members = shm_dir / "pool-arena-members"
    members.mkdir()
    (members / "tmpmembera0").touch()
    # The command runs in a mount namespace of its own where shm_dir is read-only.
    read_only = (
        unshare,
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"',
        str(shm_dir),
    )
    done = run_cli(core, "inspect", "--clean", "--json", shm_dir, wrapper=read_only)
    assert (done.returncode, done.stderr) == (0, "")
    report = strict_json(done.stdout)
    names = [(name["name"], name["state"], name["not_removed"]) for name in report["names"]]
    assert names == [(name, "dead", "Read-only file system") for name in DEAD_NAMES]
    [arena] = report["arenas"]
    [member] = arena["members"]
    assert (member["state"], member["not_removed"]) == ("dead", "Read-only file system")

    table = run_cli(core, "inspect", "--clean", shm_dir, wrapper=read_only)
    assert (table.returncode, table.stderr) == (0, "")
    rows = [line.split(None, 2) for line in table.stdout.splitlines()]
    assert [row for row in rows if row[0] == "name"] == [
        ["name", name, "dead (not removed: Read-only file system)"] for name in DEAD_NAMES
    ]
    assert sorted(os.listdir(shm_dir)) == ["pool-arena-members", *DEAD_NAMES]


def test_clean_reports_a_file_it_may_not_remove_and_goes_on(core: str, shared_dir: Path) -> None:
    # In a sticky directory, nobody may not remove root's dead name (EPERM), listed first;
    # its own, after it, goes.
    needs_root()
    roots, nobodys = (shared_dir / name for name in DEAD_NAMES)
    roots.touch(mode=0o644)
    nobodys.touch(mode=0o644)
    os.chown(nobodys, *NOBODY)

    def clean() -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = _cli.main(["inspect", "--clean", "--json", str(shared_dir)])
        return status, out.getvalue()

    status, out = in_child(clean, user=NOBODY)
    assert status == 0
    names = [
        (name["name"], name["state"], name["not_removed"]) for name in json.loads(out)["names"]
    ]
    assert names == [
        (DEAD_NAMES[0], "dead", "removal not permitted"),
        (DEAD_NAMES[1], "removed", None),
    ]
    assert os.listdir(shared_dir) == [DEAD_NAMES[0]]


# A working directory deeper than PATH_MAX.

PATH_MAX = 4096


@pytest.fixture
def deep_directory(shm_dir: Path) -> Iterator[Path]:
    """A directory more than PATH_MAX bytes below /, made and entered one step at a time
    (no path that long can be opened); the test runs in it, and returns after."""
    back = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.chdir(shm_dir)
        depth = 0
        while len(os.fsencode(os.getcwd())) <= PATH_MAX:
            os.mkdir("d" * 200)
            os.chdir("d" * 200)
            depth += 1
        yield shm_dir.joinpath(*["d" * 200] * depth)
    finally:
        os.fchdir(back)
        os.close(back)


def test_inspect_works_in_a_working_directory_deeper_than_path_max(
    core: str, deep_directory: Path
) -> None:
    os.close(os.open("toil-mutex-deep", os.O_CREAT | os.O_WRONLY))
    os.close(os.open("tmpdeadname", os.O_CREAT | os.O_WRONLY))
    table = run_cli_in(core, None, "inspect", ".")
    assert (table.returncode, table.stderr) == (0, "")
    rows = [line.split() for line in table.stdout.splitlines()[1:]]
    assert rows == [["mutex", "deep", "free"], ["name", "tmpdeadname", "dead"]]

    done = run_cli_in(core, None, "inspect", "--clean", "--json", ".")
    assert (done.returncode, done.stderr) == (0, "")
    report = strict_json(done.stdout)
    assert report["directory"] == str(deep_directory)
    assert [(name["name"], name["state"]) for name in report["names"]] == [
        ("tmpdeadname", "removed")
    ]
    assert sorted(os.listdir(".")) == ["toil-mutex-deep"]


# 4. verify: the scratch file is read strictly; --hold within bounds, removing only its own.


def record(**changes: object) -> dict[str, object]:
    """A record as `verify --hold` writes it, of a holder on another machine for a minute
    from now, with changes."""
    now = time.time()
    return {
        "host": "elsewhere",
        "boot_id": "not-this-machine",
        "pid": 1,
        "since": now,
        "until": now + 60,
        "record_lock": False,
        **changes,
    }


NOT_OURS: dict[str, Callable[[], bytes]] = {
    "a list": lambda: b"[1]",
    "a string": lambda: b'"x"',
    "a list for a time": lambda: b'{"until": []}',
    "NaN": lambda: json.dumps(record(until=float("nan"))).encode(),
    "Infinity": lambda: json.dumps(record(since=float("-inf"))).encode(),
    "a number too large": lambda: json.dumps(record()).replace('"pid": 1', '"pid": 1e999').encode(),
    "a huge PID": lambda: json.dumps(record(pid=10**30)).encode(),
    "a PID of true": lambda: json.dumps(record(pid=True)).encode(),
    "a hold beyond a day": lambda: json.dumps(record(until=time.time() + 2 * 86400)).encode(),
    "an ending before the start": lambda: json.dumps(record(until=1.0)).encode(),
    "a key more": lambda: json.dumps(record(note="mine")).encode(),
    "a key less": lambda: json.dumps(
        {k: v for k, v in record().items() if k != "boot_id"}
    ).encode(),
    "someone's data": lambda: b"someone's data, not a lock\n",
    "bytes not UTF-8": lambda: b"\xff\xfe{}",
    "nothing (yet)": lambda: b"",
    "too much": lambda: json.dumps(record(host="h" * 5000)).encode(),
}


@pytest.mark.parametrize("contents", list(NOT_OURS))
def test_verify_leaves_a_file_it_did_not_write_alone(
    core: str, shm_dir: Path, contents: str
) -> None:
    scratch = shm_dir / SCRATCH
    scratch.write_bytes(NOT_OURS[contents]())
    before = (scratch.read_bytes(), scratch.stat().st_ino)
    for args in ((), ("--json",), ("--hold", "0.1"), ("--hold", "0.1", "--json")):
        said = one_error_line(run_cli(core, "verify", shm_dir, *args))
        assert said == (
            f"{scratch} holds something verify did not write (or has not written yet): left alone"
        )
        assert (scratch.read_bytes(), scratch.stat().st_ino) == before
    assert os.listdir(shm_dir) == [SCRATCH]


@pytest.mark.parametrize("seconds", ["inf", "-inf", "nan", "1e309", "0", "-1", "86400.5"])
def test_hold_takes_finite_positive_seconds_up_to_a_day(
    core: str, shm_dir: Path, seconds: str
) -> None:
    said = one_error_line(run_cli(core, "verify", shm_dir, f"--hold={seconds}"))
    assert said.startswith("--hold takes more than 0 and at most 86400 seconds (24 hours), not ")
    assert os.listdir(shm_dir) == []


def test_hold_removes_only_the_file_it_made(core: str, shm_dir: Path) -> None:
    # While it holds, someone puts their own file at the scratch file's name.
    holder = start_verify_holder(core, shm_dir, 1.5)
    theirs = shm_dir / "theirs"
    theirs.write_text("someone's data\n")
    theirs.rename(shm_dir / SCRATCH)
    _, err = holder.communicate(timeout=30)
    assert holder.returncode == 0, err
    assert (shm_dir / SCRATCH).read_text() == "someone's data\n"


def test_a_holder_in_another_container_of_this_machine_cannot_judge(
    core: str, shm_dir: Path
) -> None:
    # Another host name, but this kernel's boot id: the same machine, whose locks exclude
    # between its processes whatever the filesystem does between machines.
    with open("/proc/sys/kernel/random/boot_id") as boot_id:
        ours = boot_id.read().strip()
    scratch = shm_dir / SCRATCH
    scratch.write_text(json.dumps(record(host=f"not-{socket.gethostname()}", boot_id=ours)))
    with holding(scratch, ["holder", "600"]):
        done = run_cli(core, "verify", "--json", shm_dir)
        assert (done.returncode, done.stderr) == (NOT_JUDGED, "")
        found = strict_json(done.stdout)
        assert (found["same_host"], found["flock"], found["safe"]) == (True, True, None)
        table = run_cli(core, "verify", shm_dir)
        assert table.returncode == NOT_JUDGED
        assert "safe          cannot tell on one machine\n" in table.stdout
    # A holder on another machine whose lock held: safe.
    scratch.write_text(json.dumps(record()))
    with holding(scratch, ["holder", "600"]):
        done = run_cli(core, "verify", "--json", shm_dir)
        assert done.returncode == 0, done.stderr
        assert strict_json(done.stdout)["safe"] is True


def test_verify_on_a_missing_directory_says_so(core: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    for args in ((), ("--hold", "1")):
        said = one_error_line(run_cli(core, "verify", missing, *args))
        assert said == f"{missing}: No such file or directory"
    assert not missing.exists()


def test_interrupted_hold_removes_its_file_and_says_nothing_more(core: str, shm_dir: Path) -> None:
    holder = start_verify_holder(core, shm_dir, 600)
    holder.send_signal(signal.SIGINT)
    out, err = holder.communicate(timeout=30)
    assert holder.returncode == INTERRUPTED
    assert out == "" and "Traceback" not in err
    assert os.listdir(shm_dir) == []
