"""Many processes on one mutex: the file is kept while others wait for it and removed by
the last holder, exclusion holds while holders are killed at random, waits are fair."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from conftest import linux_only, wait_until_blocked
from workers import (
    CHAOS,
    HAMMER,
    MUTEX_HOLDER,
    expect_line,
    kill_all,
    report,
    run_together,
    say,
    start,
)

import toil_threading

pytestmark = linux_only  # /proc/locks, to see a waiter blocked in the kernel


def test_the_file_stays_for_a_waiter_and_goes_with_the_last_holder(
    core: str, shm_dir: Path
) -> None:
    mutex_file = shm_dir / "toil-mutex-m"
    holder = start(MUTEX_HOLDER, shm_dir, "m", core=core)
    expect_line(holder, "held")
    waiter = start(MUTEX_HOLDER, shm_dir, "m", core=core)
    try:
        held = mutex_file.stat().st_ino
        wait_until_blocked(waiter.pid)
        say(holder)  # lets go while the waiter waits: the file must stay, for the waiter
        expect_line(waiter, "held")
        assert mutex_file.stat().st_ino == held, (
            "the holder unlinked the file from under its waiter"
        )
        say(waiter)  # the last holder: nobody waits, the file goes
        assert waiter.wait(30) == 0 and holder.wait(30) == 0
    finally:
        kill_all([holder, waiter])
    assert os.listdir(shm_dir) == []


def test_an_uncontended_mutex_leaves_no_file(core: str, shm_dir: Path) -> None:
    for _ in range(3):
        with toil_threading.global_mutex(shm_dir, "m"):
            assert (shm_dir / "toil-mutex-m").exists()
        assert os.listdir(shm_dir) == []


@pytest.mark.parametrize("processes,seconds", [(64, 6.0)])
def test_exclusion_holds_while_holders_are_killed(
    core: str, shm_dir: Path, processes: int, seconds: float
) -> None:
    """64 processes contend for one mutex while one of them is SIGKILLed every 20 ms (often
    inside), and replaced: no two are ever inside at once, the mutex never stays held by
    the dead, and the survivors all finish."""
    rng = random.Random(20261128)
    workers = [start(CHAOS, shm_dir, seconds, core=core) for _ in range(processes)]
    killed = 0
    try:
        for worker in workers:
            expect_line(worker, "ready")
        stop = time.monotonic() + seconds * 0.6
        while time.monotonic() < stop:
            time.sleep(0.02)
            victim = rng.randrange(len(workers))
            workers[victim].kill()
            workers[victim].wait()
            killed += 1
            workers[victim] = start(CHAOS, shm_dir, seconds * 0.4, core=core)
        reports = [report(worker) for worker in workers]
    finally:
        kill_all(workers)
    assert killed > 50
    seen = [line for each in reports for line in each["seen"]]
    assert sum(each["violations"] for each in reports) == 0, seen
    assert sum(each["acquired"] for each in reports) > processes
    # Free at once afterwards, whatever the dead left: at most the one mutex file.
    with toil_threading.global_mutex(shm_dir, "shared", timeout=5):
        pass
    assert set(os.listdir(shm_dir)) <= {"occupant", "toil-mutex-shared"}
    assert not (shm_dir / "toil-mutex-shared").exists(), "the last holder kept the file"


def test_a_killed_waiter_does_not_keep_the_file(core: str, shm_dir: Path) -> None:
    holder = start(MUTEX_HOLDER, shm_dir, "m", core=core)
    expect_line(holder, "held")
    waiter = start(MUTEX_HOLDER, shm_dir, "m", core=core)
    try:
        wait_until_blocked(waiter.pid)
        waiter.kill()  # it announced it waits, then died: its announcement dies with it
        waiter.wait()
        say(holder)
        assert holder.wait(30) == 0
    finally:
        kill_all([holder, waiter])
    assert os.listdir(shm_dir) == []


def test_mixed_with_toil_under_contention(core: str, shm_dir: Path, toil_python: str) -> None:
    """Toil's processes never announce that they wait, and always unlink; ours keep the
    file for waiters that announced.  Together they still exclude each other."""
    reports = run_together(
        [
            start(HAMMER, shm_dir, 150, "GO", **where)
            for where in [{"toil_python": toil_python}, {"core": core}, {"core": core}] * 3
        ]
    )
    assert [(each["violations"], each["exceptions"]) for each in reports] == [(0, {})] * 9
    assert os.listdir(shm_dir) == []
