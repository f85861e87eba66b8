"""LockTimeout: every wait with a timeout that runs out says which lock, how long, and who
holds it, whatever the wait was doing when time ran out (both cores)."""

import json
import os
import pickle
import time
from pathlib import Path

import pytest
from workers import ARENA_MEMBER, HAMMER, MUTEX_HOLDER, expect_line, kill_all, run_together, start

import toil_threading


def test_a_mutex_wait_names_the_file_the_mutex_and_its_holder(core: str, lock_dir: Path) -> None:
    holder = start(MUTEX_HOLDER, lock_dir, "jobs", core=core)
    try:
        expect_line(holder, "held")
        started = time.monotonic()
        with (
            pytest.raises(toil_threading.LockTimeout) as raised,
            toil_threading.global_mutex(lock_dir, "jobs", timeout=0.2),
        ):
            pytest.fail("the mutex was had while another process held it")
        elapsed = time.monotonic() - started
    finally:
        kill_all([holder])
    timeout = raised.value
    assert isinstance(timeout, TimeoutError)
    assert timeout.path == f"{lock_dir}/toil-mutex-jobs"
    assert timeout.name == "jobs"
    assert 0.2 <= timeout.waited <= elapsed
    assert timeout.holder == holder.pid
    message = str(timeout)
    assert f"mutex 'jobs' ({lock_dir}/toil-mutex-jobs)" in message
    assert f"held by PID {holder.pid}" in message
    copy = pickle.loads(pickle.dumps(timeout))
    assert (type(copy), str(copy), copy.holder) == (type(timeout), message, holder.pid)


def test_safe_lock_names_the_descriptors_file_and_holder(core: str, shm_dir: Path) -> None:
    path = shm_dir / "plain"
    path.touch()
    script = (
        "import fcntl, os, sys\n"
        f"fd = os.open({str(path)!r}, os.O_RDONLY)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    holder = start(script, core=core)
    fd = os.open(path, os.O_RDONLY)
    try:
        expect_line(holder, "held")
        with pytest.raises(toil_threading.LockTimeout) as raised:
            toil_threading.safe_lock(fd, timeout=0.05)
    finally:
        os.close(fd)
        kill_all([holder])
    assert (raised.value.path, raised.value.name) == (str(path), None)
    assert raised.value.holder == holder.pid
    assert f"the lock on {path}: held by PID {holder.pid}" in str(raised.value)


def test_an_arena_wait_names_the_arena(core: str, lock_dir: Path) -> None:
    # A member leaving last holds the arena's mutex through its cleanup: one that waits
    # to enter meanwhile times out, naming the arena.
    holder = start(MUTEX_HOLDER, lock_dir, "pool-arena-lock", core=core)
    try:
        expect_line(holder, "held")
        arena = toil_threading.LastProcessStandingArena(lock_dir, "pool")
        with pytest.raises(toil_threading.LockTimeout) as raised:
            arena.enter(timeout=0.1)
    finally:
        kill_all([holder])
    assert raised.value.name == "pool"
    assert raised.value.path == f"{lock_dir}/toil-mutex-pool-arena-lock"
    assert f"arena 'pool' ({lock_dir}/toil-mutex-pool-arena-lock)" in str(raised.value)
    assert arena.lockfileFD is None


def test_a_leave_that_times_out_stays_in_the_arena(core: str, lock_dir: Path) -> None:
    arena = toil_threading.LastProcessStandingArena(lock_dir, "pool")
    arena.enter()
    member = arena.lockfileName
    holder = start(MUTEX_HOLDER, lock_dir, "pool-arena-lock", core=core)
    try:
        expect_line(holder, "held")
        with pytest.raises(toil_threading.LockTimeout) as raised:
            for _ in arena.leave(timeout=0.1):
                pytest.fail("left while another process held the arena's mutex")
    finally:
        kill_all([holder])
    assert (raised.value.name, raised.value.holder) == ("pool", holder.pid)
    assert raised.value.waited >= 0.1
    assert arena.lockfileName == member
    assert os.listdir(lock_dir / "pool-arena-members") == [member]
    assert list(arena.leave(timeout=5)) == [True]
    assert not (lock_dir / "pool-arena-members").exists()


def test_a_holder_that_cannot_be_told_is_said_to_be_unknown(shm_dir: Path) -> None:
    error = toil_threading.LockTimeout(str(shm_dir / "toil-mutex-m"), "m", 0.5, None)
    assert str(error) == (
        f"timed out after 0.5 s waiting for mutex 'm' ({shm_dir}/toil-mutex-m):"
        " the holder is unknown"
    )


@pytest.mark.parametrize("timeout", ["0", "0.001", "0.003"])
def test_every_failure_of_contending_short_waits_is_a_lock_timeout(
    core: str, shm_dir: Path, timeout: str
) -> None:
    """Eight processes take one mutex hundreds of times each with tiny timeouts: a wait can
    run out while it polls, while it retries a file its previous holder unlinked, or while
    it opens a new one; each must end as a LockTimeout, and exclusion must hold."""
    rounds = 300
    reports = run_together(
        [start(HAMMER, shm_dir, rounds, "GO", timeout, core=core) for _ in range(8)]
    )
    failures: dict[str, int] = {}
    for found in reports:
        assert found["violations"] == 0
        for where, count in found["exceptions"].items():
            failures[where] = failures.get(where, 0) + count
    assert set(failures) <= {"acquire: LockTimeout"}, [r["first"] for r in reports]
    assert sum(r["acquired"] for r in reports) + sum(failures.values()) == 8 * rounds
    assert sum(r["acquired"] for r in reports) > 0
    firsts = [r["first"]["acquire: LockTimeout"] for r in reports if r["first"]]
    assert all("waiting for mutex 'shared'" in first for first in firsts)


def test_arena_members_with_timeouts_only_ever_time_out(core: str, shm_dir: Path) -> None:
    """Arena members entering with a tiny timeout against a member hammering the arena."""
    busy = start(ARENA_MEMBER, shm_dir, "busy", 200, core=core)
    script = (
        "import json, sys, toil_threading\n"
        f"arena = toil_threading.LastProcessStandingArena({str(shm_dir)!r}, 'pool')\n"
        "outcomes = {}\n"
        "for _ in range(200):\n"
        "    try:\n"
        "        arena.enter(timeout=0.001)\n"
        "    except Exception as error:\n"
        "        key = type(error).__name__ + ('' if error.name == 'pool' else ' unnamed')\n"
        "        outcomes[key] = outcomes.get(key, 0) + 1\n"
        "        continue\n"
        "    for _ in arena.leave():\n"
        "        pass\n"
        "    outcomes['entered'] = outcomes.get('entered', 0) + 1\n"
        "print(json.dumps(outcomes))\n"
    )
    entering = start(script, core=core)
    try:
        out, err = entering.communicate(timeout=120)
        assert entering.returncode == 0, err
        outcomes = json.loads(out)
        assert set(outcomes) <= {"entered", "LockTimeout"}, outcomes
        assert sum(outcomes.values()) == 200
    finally:
        kill_all([busy, entering])
