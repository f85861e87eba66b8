"""Command lines in `inspect`: read as far as a bound, shown whole with `--wide`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import linux_only, run_cli
from test_cli import let_go, start_holder

from toil_threading._protocol import TABLE_FILE_BYTES

pytestmark = linux_only  # holders are named from /proc/locks


def command_cell(table: str, kind: str, name: str) -> str:
    """The COMMAND cell of the table row for that kind and name (it has spaces in it)."""
    [line] = [line for line in table.splitlines() if line.split()[:2] == [kind, name]]
    return line.split(None, 4)[4]


def whole_command(pid: int) -> str:
    """The command line of pid as the table shows it whole: arguments joined by spaces."""
    arguments = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    return " ".join(" ".join(os.fsdecode(argument) for argument in arguments).split())


# Holds an flock on each file named before "--" (those after are carried along) until
# its stdin closes.
HOLDER = """
import fcntl, sys
held = [open(path) for path in sys.argv[1 : sys.argv.index("--")]]
for file in held:
    fcntl.flock(file, fcntl.LOCK_EX)
print(flush=True)
sys.stdin.read()
"""


def start_flock_holder(*paths: Path, carried: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    """A child holding an exclusive flock on each of paths (release: communicate(""))."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, *map(str, paths), "--", *carried],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    assert holder.stdout is not None and holder.stdout.readline() == "\n"
    return holder


def test_a_huge_command_line_is_read_only_so_far(core: str, shm_dir: Path) -> None:
    (shm_dir / "toil-mutex-jobs").touch()
    # 1.5 MiB of arguments (each at most what the kernel takes: 128 KiB).
    arguments = tuple(chr(ord("a") + index) * 100_000 for index in range(16))
    holder = start_flock_holder(shm_dir / "toil-mutex-jobs", carried=arguments)
    try:
        done = run_cli(core, "inspect", "--json", shm_dir)
        assert (done.returncode, done.stderr) == (1, "")
        [mutex] = json.loads(done.stdout)["mutexes"]
        assert mutex["pid"] == holder.pid
        command = mutex["command"]
        assert command[:5] == [sys.executable, "-c", HOLDER, str(shm_dir / "toil-mutex-jobs"), "--"]
        assert len("\0".join(command)) == TABLE_FILE_BYTES
        assert command[5:-1] == list(arguments[: len(command) - 6])
        assert arguments[len(command) - 6].startswith(command[-1])
    finally:
        holder.communicate("")


def test_wide_shows_a_long_command_line_whole(core: str, shm_dir: Path) -> None:
    holder, _, name = start_holder(core, shm_dir, "jobs")
    try:
        whole = whole_command(holder.pid)
        assert len(whole) > 60
        for flags in ((), ("--wide",)):
            table = run_cli(core, "inspect", *flags, shm_dir)
            assert (table.returncode, table.stderr) == (1, "")
            assert command_cell(table.stdout, "name", name) == (
                whole if flags else whole[:57] + "..."
            )
    finally:
        let_go(holder)
