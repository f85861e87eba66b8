"""The package on a filesystem that behaves like GPFS between two nodes (lockfs.py).

Two mounts of one folder stand in for two nodes: record locks taken through one conflict
with those taken through the other, flock(2) locks do not.  There the package takes a
record lock besides the flock ("flock+ofd"), and exclusion must hold across the mounts;
forced to take flock alone, it must not (so these tests can tell the difference).
Workers run as fresh interpreters on the test's core, half of them on each mount.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from children import in_child
from conftest import run_cli, start_verify_holder
from lockfs import FS_TYPE, LockfsMounts, lockfs_mounts
from workers import (
    ARENA_MEMBER,
    HAMMER,
    NAME_OWNER,
    expect_line,
    kill_all,
    report,
    run_together,
    said,
    say,
    start,
)

import toil_threading

pytestmark = pytest.mark.distributed

# Taking flock alone on lockfs: what a site that wrongly trusted it would get.
FLOCK_ALONE = {"TOIL_THREADING_LOCK_VERDICTS": f"{FS_TYPE}=cluster/cluster"}


@pytest.fixture(scope="module")
def lockfs() -> Iterator[LockfsMounts]:
    yield from lockfs_mounts(2)


class Nodes:
    """A fresh folder seen through mount A (`a`) and through mount B (`b`)."""

    def __init__(self, mounts: LockfsMounts, label: str) -> None:
        name = f"{label[:40]}-{uuid.uuid4().hex[:8]}"
        self.a, self.b = (point / name for point in mounts.mounts[:2])
        self.a.mkdir()
        self.mounts = mounts

    def on(self, index: int) -> Path:
        return self.a if index % 2 == 0 else self.b


@pytest.fixture
def nodes(request: pytest.FixtureRequest, lockfs: LockfsMounts) -> Iterator[Nodes]:
    lockfs.check_alive()
    yield Nodes(lockfs, request.node.name)
    lockfs.check_alive()


def hammer_across(
    core: str, nodes: Nodes, env: dict[str, str] | None = None
) -> tuple[int, int, int, list[dict[str, Any]]]:
    """4 processes, 2 per mount, 250 acquisitions each: (acquired, violations, exceptions)."""
    hammers = [start(HAMMER, nodes.on(index), 250, "GO", core=core, env=env) for index in range(4)]
    reports = run_together(hammers)
    return (
        sum(each["acquired"] for each in reports),
        sum(each["violations"] for each in reports),
        sum(sum(each["exceptions"].values()) for each in reports),
        reports,
    )


def test_the_report_says_flock_plus_record_lock(nodes: Nodes) -> None:
    report_ = toil_threading.filesystem_report(nodes.a)
    assert (report_.type, report_.flock, report_.posix, report_.strategy) == (
        FS_TYPE,
        "unknown",
        "unknown",
        "flock+ofd",
    )


def test_mutual_exclusion_across_two_nodes(core: str, nodes: Nodes) -> None:
    acquired, violations, exceptions, reports = hammer_across(core, nodes)
    assert (acquired, violations, exceptions) == (1000, 0, 0), reports
    assert os.listdir(nodes.a) == [], "the mutex or the potato was left behind"


def test_flock_alone_does_not_exclude_across_two_nodes(core: str, nodes: Nodes) -> None:
    acquired, violations, _, reports = hammer_across(core, nodes, FLOCK_ALONE)
    print(f"\n[lockfs, {core}] flock alone: {violations} violations in {acquired} acquisitions")
    assert acquired == 1000, reports
    assert violations > 0, "flock alone excluded across the mounts: the fixture proves nothing"


def test_arena_across_two_nodes_elects_one_last_process(core: str, nodes: Nodes) -> None:
    (nodes.a / "stuff").mkdir()
    tags = ["A0", "B0", "A1", "B1", "A2", "B2"]
    members = {
        tag: start(ARENA_MEMBER, nodes.on(index), tag, 1, "WAIT", core=core)
        for index, tag in enumerate(tags)
    }
    try:
        for tag in tags:
            expect_line(members[tag], "entered")
        assert len(os.listdir(nodes.b / "pool-arena-members")) == 6
        results = {}
        for tag in ("A0", "B0"):  # the others live: these must not clean up
            results[tag] = report(members[tag], "go\n")
        members["A1"].kill()  # a member dying does not block the cleanup
        members["A1"].wait()
        last = ("B1", "A2", "B2")  # leaving together, from both mounts: exactly one cleans up
        for tag in last:
            say(members[tag])
        results.update({tag: report(members[tag]) for tag in last})
    finally:
        kill_all(members.values())
    assert all(each["intact"] for each in results.values()), results
    assert [results[tag]["cleanups"] for tag in ("A0", "B0")] == [0, 0], results
    assert sorted(results[tag]["cleanups"] for tag in last) == [0, 0, 1], results
    assert os.listdir(nodes.a) == ["stuff"] and os.listdir(nodes.a / "stuff") == []


def test_name_made_on_one_node_lives_and_dies_on_the_other(core: str, nodes: Nodes) -> None:
    owner = start(NAME_OWNER, nodes.a, core=core)
    try:
        name = said(owner)
        for _ in range(3):
            assert toil_threading.process_name_exists(nodes.b, name), "alive, but dead through B"
        owner.kill()
        owner.wait()
    finally:
        kill_all([owner])
    killed = time.monotonic()  # the daemon drops the dead owner's lock as its file is released
    while toil_threading.process_name_exists(nodes.b, name):
        assert time.monotonic() - killed < 10, "a SIGKILLed owner's name still alive through B"
        time.sleep(0.01)
    assert os.listdir(nodes.a) == [], "the dead name's file was left"


def test_verify_across_two_nodes(core: str, nodes: Nodes) -> None:
    holder = start_verify_holder(core, nodes.a, 5, seen_through=nodes.b)
    try:
        done = run_cli(core, "verify", nodes.b, "--json")
        flock_alone = run_cli(core, "verify", nodes.b, "--json", env=FLOCK_ALONE)
    finally:
        holder.communicate(timeout=30)
    # The record lock held across the mounts, but both mounts are on this machine: verify
    # cannot vouch for other machines (exit 3).  Taking flock alone fails here, which one
    # machine can show (exit 1).
    assert done.returncode == 3, done.stderr
    found = json.loads(done.stdout)
    assert (found["flock"], found["posix"], found["strategy"], found["safe"]) == (
        False,
        True,
        "flock+ofd",
        None,
    )
    assert flock_alone.returncode == 1, flock_alone.stderr
    found = json.loads(flock_alone.stdout)
    assert (found["flock"], found["strategy"], found["safe"]) == (False, "flock", False)
    assert os.listdir(nodes.a) == []


def round_trip_seconds(core: str, directory: Path, env: dict[str, str] | None) -> float:
    """Seconds per uncontended acquisition and release, in a fresh process on core."""
    child = start(
        "import sys, time, toil_threading\n"
        "for _ in range(50):\n"
        "    with toil_threading.global_mutex(sys.argv[1], 'alone'):\n"
        "        pass\n"
        "started = time.perf_counter()\n"
        "for _ in range(500):\n"
        "    with toil_threading.global_mutex(sys.argv[1], 'alone'):\n"
        "        pass\n"
        "print((time.perf_counter() - started) / 500)\n",
        directory,
        core=core,
        env=env,
    )
    return float(report(child))


def test_cost_of_the_record_lock(
    core: str, nodes: Nodes, record_property: Callable[[str, object], None]
) -> None:
    both = round_trip_seconds(core, nodes.a, None)
    alone = round_trip_seconds(core, nodes.a, FLOCK_ALONE)
    record_property("round_trip_ms_flock_and_record_lock", round(both * 1e3, 3))
    record_property("round_trip_ms_flock_alone", round(alone * 1e3, 3))
    print(
        f"\n[lockfs, {core}] uncontended round trip: {both * 1e3:.3f} ms with the record lock,"
        f" {alone * 1e3:.3f} ms with flock alone ({(both - alone) * 1e3:+.3f} ms)"
    )
    assert 0 < both < 1 and 0 < alone < 1  # sanity only: timings are not asserted


def test_another_thread_runs_while_a_mount_hangs(core: str, nodes: Nodes) -> None:
    """With the daemon of mount A stopped, every call there blocks in the kernel; a thread
    waiting so must not hold the GIL, or its whole process would stand still (in a child
    with a time limit, so that such a hang fails the test instead of stalling the suite)."""
    daemon = nodes.mounts.daemons[0]

    def stop_the_mount_and_tick() -> tuple[bool, int, bool]:
        entered = threading.Event()

        def take() -> None:
            with toil_threading.global_mutex(nodes.a, "hung"):
                entered.set()

        os.kill(daemon.pid, signal.SIGSTOP)
        try:
            waiter = threading.Thread(target=take, daemon=True)
            waiter.start()
            ticks = 0
            stop = time.monotonic() + 0.5
            while time.monotonic() < stop:
                ticks += 1
                time.sleep(0.001)
            hung = not entered.is_set()
        finally:
            os.kill(daemon.pid, signal.SIGCONT)
        waiter.join(30)
        return hung, ticks, entered.is_set()

    try:
        hung, ticks, entered = in_child(stop_the_mount_and_tick, timeout=30)
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    assert hung, "the call on the stopped mount did not block: nothing was tested"
    assert ticks > 100, f"the main thread ran only {ticks} times in 0.5 s"
    assert entered
