"""The coordination primitives between two GlusterFS clients of one volume.

Each test runs on both cores and on two volumes: "default" (GlusterFS's client caching as
shipped) and "strict" (client caching off, see gluster.py).  Processes on mount A and on
mount B stand in for processes on two nodes sharing a directory.  Workers are fresh
interpreters on the test's core; they report in JSON on stdout.

Run with ``pytest -m distributed -s`` to see the acquisition costs measured (they are also
recorded as properties in a JUnit XML report).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gluster import (
    CACHING_MODES,
    GlusterCluster,
    SharedDir,
    Volume,
    cluster_for_session,
    fresh_shared_dir,
    volume_for_session,
)
from workers import (
    ARENA_MEMBER,
    HAMMER,
    MUTEX_HOLDER,
    NAME_OWNER,
    expect_line,
    kill_all,
    report,
    said,
    say,
    start,
)

import toil_threading

pytestmark = pytest.mark.distributed

WORKER_TIMEOUT = 60.0


@pytest.fixture(scope="session")
def gluster_cluster() -> Iterator[GlusterCluster]:
    """One glusterd on 127.0.0.1 for the session (skips where it cannot be stood up)."""
    yield from cluster_for_session()


@pytest.fixture(scope="session", params=CACHING_MODES)
def gluster_volume(
    request: pytest.FixtureRequest, gluster_cluster: GlusterCluster
) -> Iterator[Volume]:
    """A volume per caching mode, mounted twice, built once for the session."""
    yield from volume_for_session(gluster_cluster, request.param)


@pytest.fixture
def shared_dir(request: pytest.FixtureRequest, gluster_volume: Volume) -> Iterator[SharedDir]:
    """A fresh folder made through mount A (`.a`), the same through mount B (`.b`)."""
    yield from fresh_shared_dir(gluster_volume, request.node.name)


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def measure_uncontended(base_dir: Path, rounds: int) -> float:
    """Seconds per acquisition and release of a free mutex, in this process on its core."""
    started = time.perf_counter()
    for _ in range(rounds):
        with toil_threading.global_mutex(base_dir, "alone"):
            pass
    return (time.perf_counter() - started) / rounds


def test_mutual_exclusion_across_two_clients(
    core: str,
    shared_dir: SharedDir,
    record_property: Callable[[str, object], None],
) -> None:
    processes_per_mount, rounds = 2, 250
    placement = ["A", "B"] * processes_per_mount
    workers = [
        start(HAMMER, shared_dir.a if mount == "A" else shared_dir.b, rounds, "GO", core=core)
        for mount in placement
    ]
    try:
        for worker in workers:
            expect_line(worker, "ready")
        started = time.perf_counter()
        for worker in workers:
            say(worker)
        outcomes = []
        for worker in workers:
            try:
                outcomes.append(worker.communicate(timeout=WORKER_TIMEOUT))
            except subprocess.TimeoutExpired:
                worker.kill()
                out, err = worker.communicate()
                outcomes.append((out, f"hung: killed after {WORKER_TIMEOUT} s\n{err}"))
        wall = time.perf_counter() - started
    finally:
        kill_all(workers)

    report = []
    total_violations = total_exceptions = total_acquired = 0
    failed = False
    for index, (mount, worker, (out, err)) in enumerate(
        zip(placement, workers, outcomes, strict=True)
    ):
        try:
            result = json.loads(out.strip().splitlines()[-1])
        except (IndexError, ValueError):
            failed = True
            report.append(
                f"  process {index} on mount {mount}: exit {worker.returncode}, no report; "
                f"stderr: {err.strip()[-2000:]}"
            )
            continue
        errors = sum(result["exceptions"].values())
        total_violations += result["violations"]
        total_exceptions += errors
        total_acquired += result["acquired"]
        failed = failed or worker.returncode != 0
        report.append(
            f"  process {index} on mount {mount}: {result['acquired']}/{rounds} acquired, "
            f"{result['violations']} violations, {errors} exceptions {result['exceptions']}, "
            f"{result['seconds']:.2f} s"
            + (f", exit {worker.returncode}: {err.strip()[-1000:]}" if worker.returncode else "")
        )
        report.extend(f"      first {key}: {message}" for key, message in result["first"].items())
    leftovers = listing(shared_dir.a)
    summary = (
        f"{shared_dir.mode} caching, {core} core: {total_violations} violations and "
        f"{total_exceptions} exceptions in {len(workers) * rounds} acquisitions by "
        f"{len(workers)} processes ({processes_per_mount} per mount); left in the folder: "
        f"{leftovers}\n" + "\n".join(report)
    )

    # Costs: contended throughput of the run above, then one process alone on each mount.
    alone = {
        mount: measure_uncontended(folder, 200)
        for mount, folder in (("A", shared_dir.a), ("B", shared_dir.b))
    }
    per_second = total_acquired / wall if wall else 0.0
    record_property("caching", shared_dir.mode)
    record_property("contended_acquisitions_per_s", round(per_second, 1))
    record_property("uncontended_ms_per_acquisition_A", round(alone["A"] * 1e3, 3))
    record_property("uncontended_ms_per_acquisition_B", round(alone["B"] * 1e3, 3))
    print(
        f"\n[gluster {shared_dir.mode}, {core}] contended: {total_acquired} acquisitions by "
        f"{len(workers)} processes in {wall:.2f} s = {per_second:.0f}/s "
        f"({1e3 / per_second if per_second else float('inf'):.2f} ms each); "
        f"uncontended: {alone['A'] * 1e3:.2f} ms on A, {alone['B'] * 1e3:.2f} ms on B"
    )
    print(summary)

    assert not failed and total_violations == 0 and total_exceptions == 0, summary
    assert leftovers == [], summary


WAITER = r"""
import sys, time, toil_threading
try:
    with toil_threading.global_mutex(sys.argv[1], "held", timeout=0.5):
        print("not excluded", flush=True)
        sys.exit(1)
except TimeoutError:
    print("excluded", flush=True)
print("waiting", flush=True)
sys.stdin.readline()
started = time.monotonic()
with toil_threading.global_mutex(sys.argv[1], "held", timeout=float(sys.argv[2])):
    print("acquired", time.monotonic() - started, flush=True)
"""


def test_sigkilled_holder_on_a_frees_the_mutex_for_b(
    core: str,
    shared_dir: SharedDir,
    record_property: Callable[[str, object], None],
) -> None:
    generous = 30.0
    holder = start(MUTEX_HOLDER, shared_dir.a, "held", core=core)
    waiter = None
    try:
        expect_line(holder, "held")
        assert (shared_dir.b / "toil-mutex-held").exists(), (
            "the holder's mutex file is not seen through B"
        )
        waiter = start(WAITER, shared_dir.b, generous, core=core)
        expect_line(waiter, "excluded")  # a holder through A keeps a process on B out
        expect_line(waiter, "waiting")
        say(waiter)
        time.sleep(0.3)  # the waiter is now polling the lock through B
        assert waiter.poll() is None, waiter.communicate()
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        out, err = waiter.communicate(timeout=generous + 15)
    finally:
        kill_all([holder] + ([waiter] if waiter else []))
    assert waiter.returncode == 0, (
        f"{shared_dir.mode} caching, {core} core: the waiter on B failed:\n{err}"
    )
    word, waited = out.split()
    assert word == "acquired"
    record_property("waited_after_sigkill_s", round(float(waited), 3))
    print(
        f"\n[gluster {shared_dir.mode}, {core}] waiter on B had the mutex {float(waited):.3f} s "
        "after the wait began (holder SIGKILLed ~0.3 s in)"
    )
    assert listing(shared_dir.a) == [] and listing(shared_dir.b) == [], "the mutex file was left"


def test_arena_across_two_clients_elects_one_last_process(
    core: str,
    shared_dir: SharedDir,
) -> None:
    (shared_dir.a / "stuff").mkdir()
    tags = ["A0", "B0", "A1", "B1", "A2", "B2"]
    members = {}
    try:
        for tag in tags:  # all at once, entering from both mounts
            folder = shared_dir.a if tag[0] == "A" else shared_dir.b
            members[tag] = start(ARENA_MEMBER, folder, tag, 1, "WAIT", core=core)
        for tag in tags:
            expect_line(members[tag], "entered")
        registered = listing(shared_dir.b / "pool-arena-members")
        assert len(registered) == 6, f"members seen through B: {registered}"
        assert listing(shared_dir.b / "stuff") == sorted(f"{tag}-0" for tag in tags)

        def leave(tag: str) -> None:
            say(members[tag])

        def result(tag: str) -> dict[str, object]:
            return report(members[tag])

        results = {}
        for tag in ("A0", "B0"):  # others live: these must not clean up
            leave(tag)
            results[tag] = result(tag)
        members["A1"].send_signal(signal.SIGKILL)  # a member dying does not block the cleanup
        members["A1"].wait(10)
        last = ("B1", "A2", "B2")  # leaving together, from both mounts: exactly one cleans up
        for tag in last:
            leave(tag)
        for tag in last:
            results[tag] = result(tag)
    finally:
        kill_all(list(members.values()))

    summary = f"{shared_dir.mode} caching, {core} core: {results}"
    assert all(entry["intact"] for entry in results.values()), summary
    assert results["A0"]["cleanups"] == 0 and results["B0"]["cleanups"] == 0, summary
    assert sorted(results[tag]["cleanups"] for tag in last) == [0, 0, 1], summary  # type: ignore[type-var]
    assert listing(shared_dir.a / "stuff") == [], summary
    assert listing(shared_dir.a) == ["stuff"], f"members or mutex left: {summary}"
    assert listing(shared_dir.b) == ["stuff"], f"members or mutex left, seen through B: {summary}"


def test_process_name_made_through_a_lives_and_dies_through_b(
    core: str,
    shared_dir: SharedDir,
    record_property: Callable[[str, object], None],
) -> None:
    owner = start(NAME_OWNER, shared_dir.a, core=core)
    try:
        name = said(owner)
        assert name.startswith("tmp"), owner.communicate()
        for _ in range(3):
            assert toil_threading.process_name_exists(shared_dir.b, name), (
                "alive, but dead through B"
            )
            assert toil_threading.process_name_exists(shared_dir.a, name), (
                "alive, but dead through A"
            )
        assert listing(shared_dir.b) == [name], "polling a live name removed its file"
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
    finally:
        kill_all([owner])
    # The lock goes when the FUSE client releases the dead owner's file, which the kernel
    # sends asynchronously: allow it a moment, and say how long it took.
    killed = time.monotonic()
    while toil_threading.process_name_exists(shared_dir.b, name):
        assert time.monotonic() - killed < 10, (
            "a SIGKILLed owner's name still alive through B after 10 s"
        )
        time.sleep(0.01)
    record_property("name_dead_after_s", round(time.monotonic() - killed, 3))
    assert not toil_threading.process_name_exists(shared_dir.b, name)
    assert not toil_threading.process_name_exists(shared_dir.a, name)
    assert listing(shared_dir.a) == [] and listing(shared_dir.b) == [], (
        "the dead name's file was left"
    )
