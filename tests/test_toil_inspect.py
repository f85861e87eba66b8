"""`inspect --wide`, which shows whole command lines in the table."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import linux_only, run_cli
from test_cli import let_go, start_holder

pytestmark = linux_only  # holders are named from /proc/locks


def command_cell(table: str, kind: str, name: str) -> str:
    """The COMMAND cell of the table row for that kind and name (it has spaces in it)."""
    [line] = [line for line in table.splitlines() if line.split()[:2] == [kind, name]]
    return line.split(None, 4)[4]


def whole_command(pid: int) -> str:
    """The command line of pid as the table shows it whole: arguments joined by spaces."""
    arguments = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    return " ".join(" ".join(os.fsdecode(argument) for argument in arguments).split())


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
