"""Which filesystem holds a path, what its locks do between machines, and what the package
does there: a corpus of captured systems, the site's settings, and `verify`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import linux_only, python_with_core, run_cli, start_verify_holder
from workers import finish

import toil_threading

CORPUS = Path(__file__).with_name("data") / "mountinfo"
CASES = json.loads((CORPUS / "cases.json").read_text())


@pytest.mark.parametrize("case", CASES, ids=[case["case"] for case in CASES])
def test_captured_systems(core: str, tmp_path: Path, case: dict[str, Any]) -> None:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/mountinfo").write_bytes((CORPUS / case["file"]).read_bytes())
    report = toil_threading.filesystem_report(case["path"], root=tmp_path)
    expected = case["expected"]
    found = {key: getattr(report, key) for key in expected if key != "options_include"}
    assert found == {key: value for key, value in expected.items() if key != "options_include"}
    assert set(expected["options_include"]) <= set(report.options.split(","))
    assert report.reason


def test_corpus_covers_every_verdict_and_strategy() -> None:
    seen = {(case["expected"]["flock"], case["expected"]["posix"]) for case in CASES}
    strategies = {case["expected"]["strategy"] for case in CASES}
    assert {verdict for pair in seen for verdict in pair} == {
        "local",
        "cluster",
        "node",
        "refused",
        "unknown",
    }
    assert strategies == {"flock", "flock+ofd", "node-local", "refused"}
    assert len({case["file"] for case in CASES}) >= 25


def test_report_of_this_machine(core: str, tmp_path: Path) -> None:
    report = toil_threading.filesystem_report(tmp_path)
    assert report.mount_point is not None and str(tmp_path).startswith(report.mount_point)
    assert report.magic == f"0x{toil_threading._impl.core.fs_magic(str(tmp_path)):08x}"
    assert report.strategy == "flock" and report.flock == report.posix == "local"
    with pytest.raises(FileNotFoundError):
        toil_threading.filesystem_report(tmp_path / "missing")


# What the site says: verdicts of its own, and what to do where locks stay on one node.

DECIDE = """
import json, logging, os, sys, toil_threading
logging.basicConfig(level=logging.WARNING, format="%(levelname)s:%(message)s")
outcomes = []
for _ in range(3):
    try:
        with toil_threading.global_mutex(sys.argv[1], "m"):
            outcomes.append("held")
    except Exception as error:
        outcomes.append(f"{type(error).__name__}: {error}")
print(json.dumps(outcomes))
"""


def decide(core: str, directory: Path, **settings: str) -> tuple[list[str], str]:
    """Three acquisitions in a fresh process with settings; what each did, and the log."""
    child = python_with_core(
        core,
        f"import sys\nsys.argv[1:] = [{str(directory)!r}]\n" + DECIDE,
        env=settings,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = finish(child)
    assert child.returncode == 0, err
    return json.loads(out), err


@linux_only
def test_node_local_locks_warn_once_by_default(core: str, shm_dir: Path) -> None:
    # The site says tmpfs keeps both kinds of lock on one node, as NFS mounted nolock does.
    outcomes, log = decide(core, shm_dir, TOIL_THREADING_LOCK_VERDICTS="tmpfs=node/node")
    assert outcomes == ["held"] * 3
    warnings = [line for line in log.splitlines() if line.startswith("WARNING:")]
    assert len(warnings) == 1, log
    assert "only among the processes of this machine" in warnings[0]


@linux_only
def test_node_local_locks_refused_or_allowed_on_request(core: str, shm_dir: Path) -> None:
    verdicts = {"TOIL_THREADING_LOCK_VERDICTS": "tmpfs=node/node"}
    outcomes, _ = decide(core, shm_dir, TOIL_THREADING_NODE_LOCAL_LOCKS="refuse", **verdicts)
    assert all(outcome.startswith("RuntimeError: Refusing to lock") for outcome in outcomes)
    assert "TOIL_THREADING_NODE_LOCAL_LOCKS=refuse" in outcomes[0]
    outcomes, log = decide(core, shm_dir, TOIL_THREADING_NODE_LOCAL_LOCKS="allow", **verdicts)
    assert outcomes == ["held"] * 3 and "WARNING" not in log
    assert os.listdir(shm_dir) == []


@linux_only
def test_a_refused_filesystem_takes_no_lock(core: str, shm_dir: Path) -> None:
    outcomes, _ = decide(core, shm_dir, TOIL_THREADING_LOCK_VERDICTS="tmpfs=refused/refused")
    assert all(outcome.startswith("RuntimeError: Refusing to lock") for outcome in outcomes)


@pytest.mark.parametrize(
    "setting,variable",
    [
        ({"TOIL_THREADING_LOCK_VERDICTS": "tmpfs=sometimes/node"}, "LOCK_VERDICTS"),
        ({"TOIL_THREADING_LOCK_VERDICTS": "=cluster/cluster"}, "LOCK_VERDICTS"),
        (
            {
                "TOIL_THREADING_LOCK_VERDICTS": "tmpfs=node/node",
                "TOIL_THREADING_NODE_LOCAL_LOCKS": "x",
            },
            "NODE_LOCAL_LOCKS",
        ),
    ],
)
@linux_only
def test_bad_settings_are_named(
    core: str, shm_dir: Path, setting: dict[str, str], variable: str
) -> None:
    outcomes, _ = decide(core, shm_dir, **setting)
    assert all(outcome.startswith("ValueError") for outcome in outcomes), outcomes
    assert f"TOIL_THREADING_{variable}" in outcomes[0]


# verify, on one machine: both kinds of lock exclude between two processes here.


def verify(core: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_cli(core, "verify", *args)


@linux_only
def test_verify_between_two_processes_of_this_machine(core: str, shm_dir: Path) -> None:
    holder = start_verify_holder(core, shm_dir, 3)
    try:
        # Both locks held, but on one machine that proves nothing across machines: exit 3.
        done = verify(core, shm_dir, "--json")
        assert done.returncode == 3, done.stderr
        found = json.loads(done.stdout)
        assert (found["flock"], found["posix"], found["strategy"], found["safe"]) == (
            True,
            True,
            "flock",
            None,
        )
        assert found["same_host"] is True and found["holder"]["pid"] == holder.pid
        table = verify(core, shm_dir)
        assert table.returncode == 3
        assert "flock         excludes across the two" in table.stdout
        assert "nothing was checked across machines" in table.stdout
    finally:
        out, err = holder.communicate(timeout=30)
    assert holder.returncode == 0, err
    assert json.loads(out)["held"]["pid"] == holder.pid
    assert os.listdir(shm_dir) == [], "the holder left its scratch file"


@linux_only
def test_verify_without_a_live_holder(core: str, shm_dir: Path) -> None:
    done = verify(core, shm_dir, "--json")
    assert (done.returncode, done.stdout) == (2, "")
    assert "no holder" in done.stderr
    # A dead holder's leftover names a time long past: no holder either.
    leftover = shm_dir / "toil-threading-verify"
    record = {"host": "elsewhere", "boot_id": "", "pid": 1, "since": 1.0, "until": 2.0}
    leftover.write_text(json.dumps({**record, "record_lock": True}))
    done = verify(core, shm_dir)
    assert done.returncode == 2 and "leftover" in done.stderr
    # A new holder replaces a dead one's leftover, and removes its own file after.
    holder = start_verify_holder(core, shm_dir, 0.5)
    finish(holder)
    assert holder.returncode == 0, holder.stderr
    assert os.listdir(shm_dir) == []


@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory"])
def test_verify_leaves_what_it_did_not_make(core: str, shm_dir: Path, kind: str) -> None:
    scratch = shm_dir / "toil-threading-verify"
    victim = shm_dir / "victim"
    victim.write_text("someone's")
    {
        "fifo": lambda: os.mkfifo(scratch),
        "symlink": lambda: scratch.symlink_to(victim),
        "directory": scratch.mkdir,
    }[kind]()
    done = run_cli(core, "verify", shm_dir, "--hold", "0.1")
    assert done.returncode == 2, done.stdout
    assert str(scratch) in done.stderr
    assert "holding" not in done.stderr, "said it held what it never locked"
    assert sorted(os.listdir(shm_dir)) == ["toil-threading-verify", "victim"]
    assert victim.read_text() == "someone's"
