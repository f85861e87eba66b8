"""toil_threading.aio: waits that leave the event loop running, exclusion with every other
kind of waiter, cancellation at any point, timeouts and argument checks (both cores)."""

import asyncio
import os
import random
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from workers import (
    ARENA_MEMBER,
    HAMMER,
    MUTEX_HOLDER,
    expect_line,
    kill_all,
    report,
    say,
    start,
)

import toil_threading
from toil_threading import aio

# hammer() below, in another process: TASKS coroutines, ROUNDS each, starting when a line
# comes on stdin (run with this folder on PYTHONPATH).
#   ASYNC_HAMMER BASE_DIR TASKS ROUNDS
ASYNC_HAMMER = r"""
import asyncio, json, sys
from test_aio import hammer
print("ready", flush=True)
sys.stdin.readline()
print(json.dumps(asyncio.run(hammer(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))))
"""


async def hammer(base_dir: str, tasks: int, rounds: int) -> dict[str, int]:
    """tasks coroutines take the mutex "shared" rounds times each, proving inside, across
    a turn of the loop, that nobody else is (HAMMER's potato)."""
    potato = os.path.join(base_dir, "potato")
    counts = {"acquired": 0, "violations": 0}

    async def one_task() -> None:
        for _ in range(rounds):
            async with aio.global_mutex(base_dir, "shared"):
                counts["acquired"] += 1
                try:
                    os.close(os.open(potato, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    counts["violations"] += 1
                    continue
                await asyncio.sleep(0)
                os.unlink(potato)

    await asyncio.gather(*(one_task() for _ in range(tasks)))
    return counts


# Takes and lets go of MUTEX for SECONDS, holding it 0 to 3 ms and pausing 0 to 1 ms
# between holds, so that waits elsewhere start and end at random.
#   TOGGLER BASE_DIR MUTEX SECONDS
TOGGLER = r"""
import json, random, sys, time, toil_threading
base_dir, mutex, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
print("ready", flush=True)
holds, stop = 0, time.monotonic() + seconds
while time.monotonic() < stop:
    with toil_threading.global_mutex(base_dir, mutex):
        holds += 1
        time.sleep(random.uniform(0, 0.003))
    time.sleep(random.uniform(0, 0.001))
print(json.dumps({"holds": holds}), flush=True)
"""

# Takes MUTEX with a timeout of 5 s and says how long that took.
#   TAKER BASE_DIR MUTEX
TAKER = r"""
import sys, time, toil_threading
started = time.monotonic()
with toil_threading.global_mutex(sys.argv[1], sys.argv[2], timeout=5):
    print(time.monotonic() - started, flush=True)
"""


def seconds_for_another_process(core: str, base_dir: Path, mutex: str) -> float:
    """How long another process took to take the mutex (it gives up after 5 s)."""
    taker = start(TAKER, base_dir, mutex, core=core)
    out, err = taker.communicate(timeout=30)
    assert taker.returncode == 0, err
    return float(out)


@contextmanager
def held_elsewhere(core: str, base_dir: Path, mutex: str) -> Iterator[int]:
    """Another process holds the mutex throughout; yields its PID."""
    holder = start(MUTEX_HOLDER, base_dir, mutex, core=core)
    try:
        expect_line(holder, "held")
        yield holder.pid
    finally:
        kill_all([holder])


def test_coroutines_and_processes_exclude_each_other(
    core: str, shm_dir: Path, no_fd_leak: None
) -> None:
    """Twenty coroutines here, five in another process's loop and a process of the
    synchronous API take one mutex: never two at once, and nothing is left after."""
    synchronous = start(HAMMER, shm_dir, 100, "GO", core=core)
    asynchronous = start(
        ASYNC_HAMMER,
        shm_dir,
        5,
        20,
        core=core,
        env={"PYTHONPATH": str(Path(__file__).parent)},
    )
    try:
        for worker in (synchronous, asynchronous):
            expect_line(worker, "ready")
        for worker in (synchronous, asynchronous):
            say(worker)
        here = asyncio.run(hammer(str(shm_dir), 20, 10))
        elsewhere = [report(synchronous), report(asynchronous)]
    finally:
        kill_all([synchronous, asynchronous])
    assert here == {"acquired": 200, "violations": 0}
    assert elsewhere[1] == {"acquired": 100, "violations": 0}
    assert (elsewhere[0]["acquired"], elsewhere[0]["violations"]) == (100, 0)
    assert elsewhere[0]["exceptions"] == {}
    assert os.listdir(shm_dir) == []


@pytest.mark.parametrize("waiting_in", ["global_mutex", "enter", "leave"])
def test_the_loop_runs_while_a_task_waits(core: str, shm_dir: Path, waiting_in: str) -> None:
    """A ticker keeps ticking every millisecond or so while another task waits for a lock
    another process holds; the wait ends soon after that process lets go."""
    arena = aio.LastProcessStandingArena(shm_dir, "pool")
    mutex = "m" if waiting_in == "global_mutex" else "pool-arena-lock"

    async def wait() -> None:
        if waiting_in == "global_mutex":
            async with aio.global_mutex(shm_dir, mutex):
                pass
        elif waiting_in == "enter":
            await arena.enter()
        else:
            assert [last async for last in arena.leave()] == [True]

    async def main(holder: int) -> tuple[int, float, float]:
        ticks, longest_gap = 0, 0.0

        async def tick() -> None:
            nonlocal ticks, longest_gap
            before = time.monotonic()
            while True:
                await asyncio.sleep(0.001)
                ticks, now = ticks + 1, time.monotonic()
                longest_gap, before = max(longest_gap, now - before), now

        ticker = asyncio.create_task(tick())
        waiter = asyncio.create_task(wait())
        await asyncio.sleep(0.3)
        assert not waiter.done(), "had the lock while another process held it"
        ticked, gap = ticks, longest_gap
        os.kill(holder, signal.SIGKILL)  # its lock goes with it
        released = time.monotonic()
        await asyncio.wait_for(waiter, 5)
        ticker.cancel()
        return ticked, gap, time.monotonic() - released

    if waiting_in == "leave":
        asyncio.run(arena.enter())
    with held_elsewhere(core, shm_dir, mutex) as holder:
        ticked, longest_gap, wait_after_release = asyncio.run(main(holder))
    assert ticked >= 30, f"the loop ticked only {ticked} times in 0.3 s"
    assert longest_gap < 0.2
    assert wait_after_release < 1
    if waiting_in == "enter":
        assert asyncio.run(leave_all([arena])) == [True]
    assert arena.lockfileFD is None


async def leave_all(arenas: list[aio.LastProcessStandingArena]) -> list[bool]:
    """Every arena left, one after the other: what their leave() yielded."""
    return [last for arena in arenas async for last in arena.leave()]


def cancel_at_random(
    tasks: list["asyncio.Task[None]"], states: list[str], cancelled_in: dict[str, int]
) -> None:
    """Cancel each task 0 to 5 ms from now, counting the cancels by the task's state then
    (where it is counted): a task is only ever cancelled at an await, so that is the
    state it ends in."""

    def cancel(index: int) -> None:
        if tasks[index].cancel() and states[index] in cancelled_in:
            cancelled_in[states[index]] += 1

    loop = asyncio.get_running_loop()
    for index in range(len(tasks)):
        loop.call_later(random.uniform(0, 0.005), cancel, index)


def test_cancelled_mutex_waits_and_holds_leave_nothing_held(
    core: str, shm_dir: Path, no_fd_leak: None
) -> None:
    """Tasks cancelled at random while they wait (another process takes and lets go of the
    mutex at random) or while they hold: never two holders, and after them the mutex is
    free at once for another process, with no file and no descriptor left.  The ended
    tasks are kept, and with them each one's context manager (in its frame, which the
    task's exception holds): the mutex is let go by the exit, not by the collector."""
    potato = shm_dir / "potato"
    cancelled_in = {"waiting": 0, "holding": 0}
    violations = 0

    async def take(states: list[str], index: int) -> None:
        nonlocal violations
        states[index] = "waiting"
        mutex = aio.global_mutex(shm_dir, "m")
        async with mutex:
            states[index] = "holding"
            try:
                potato.touch(exist_ok=False)
            except FileExistsError:
                violations += 1
                return
            try:
                await asyncio.sleep(random.uniform(0, 0.003))
            finally:
                potato.unlink()
        states[index] = "done"

    async def main() -> list["asyncio.Task[None]"]:
        ended = []
        stop = time.monotonic() + 0.8
        while time.monotonic() < stop:
            states = ["starting"] * 20
            tasks = [asyncio.create_task(take(states, index)) for index in range(20)]
            cancel_at_random(tasks, states, cancelled_in)
            await asyncio.gather(*tasks, return_exceptions=True)
            ended += tasks
        return ended

    toggler = start(TOGGLER, shm_dir, "m", 1, core=core)
    try:
        expect_line(toggler, "ready")
        ended = asyncio.run(main())
        assert report(toggler)["holds"] > 0
    finally:
        kill_all([toggler])
    assert violations == 0
    assert cancelled_in["waiting"] > 0 and cancelled_in["holding"] > 0, cancelled_in
    assert seconds_for_another_process(core, shm_dir, "m") < 1
    del ended
    assert os.listdir(shm_dir) == []


def test_cancelled_arena_entries_and_leaves_are_in_or_out(
    core: str, shm_dir: Path, no_fd_leak: None
) -> None:
    """Members cancelled at random while entering, inside or leaving, while another process
    takes and lets go of the arena's mutex at random: each is either in the arena (and
    leaves again) or out (leave() refused); none runs the cleanup while another process's
    member is inside, and that member, last out, runs it once."""
    anchor = start(ARENA_MEMBER, shm_dir, "anchor", 1, "WAIT", core=core)
    toggler = start(TOGGLER, shm_dir, "pool-arena-lock", 1, core=core)
    cleanups = 0
    cancelled_in = {"entering": 0, "inside": 0, "leaving": 0}

    async def member(arena: aio.LastProcessStandingArena, states: list[str], index: int) -> None:
        nonlocal cleanups
        states[index] = "entering"
        await arena.enter()
        states[index] = "inside"
        await asyncio.sleep(random.uniform(0, 0.003))
        states[index] = "leaving"
        async for _ in arena.leave():
            cleanups += 1
        states[index] = "out"

    async def batch() -> None:
        arenas = [aio.LastProcessStandingArena(shm_dir, "pool") for _ in range(20)]
        states = ["starting"] * 20
        tasks = [asyncio.create_task(member(arena, states, i)) for i, arena in enumerate(arenas)]
        cancel_at_random(tasks, states, cancelled_in)
        await asyncio.gather(*tasks, return_exceptions=True)
        for arena, state in zip(arenas, states, strict=True):
            assert (arena.lockfileFD is None) == (state in ("starting", "entering", "out"))
            if arena.lockfileFD is None:
                with pytest.raises(RuntimeError, match="not in the arena 'pool'"):
                    await leave_all([arena])
        assert await leave_all([arena for arena in arenas if arena.lockfileFD is not None]) == []

    async def main() -> None:
        stop = time.monotonic() + 0.8
        while time.monotonic() < stop:
            await batch()

    try:
        expect_line(anchor, "entered")
        expect_line(toggler, "ready")
        asyncio.run(main())
        assert report(toggler)["holds"] > 0
        last_out = report(anchor, "go\n")
    finally:
        kill_all([anchor, toggler])
    assert cleanups == 0
    assert all(cancelled_in.values()), cancelled_in
    assert last_out["cleanups"] == 1
    assert not (shm_dir / "pool-arena-members").exists()
    assert seconds_for_another_process(core, shm_dir, "pool-arena-lock") < 1


def test_a_leave_cancelled_in_its_cleanup_is_out_and_lets_go(
    core: str, shm_dir: Path, no_fd_leak: None
) -> None:
    """The last one out, cancelled in its cleanup: the cleanup ran once, the member is out,
    and the arena's mutex is free while the loop still runs; the next member in and out
    leaves nothing behind."""
    arena = aio.LastProcessStandingArena(shm_dir, "pool")
    cleanups = 0

    async def leave() -> None:
        nonlocal cleanups
        async for _ in arena.leave():
            cleanups += 1
            await asyncio.sleep(10)

    async def main() -> float:
        await arena.enter()
        leaving = asyncio.create_task(leave())
        await asyncio.sleep(random.uniform(0.001, 0.003))
        assert cleanups == 1
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        await asyncio.sleep(0.01)  # the loop closes the interrupted leave
        return seconds_for_another_process(core, shm_dir, "pool-arena-lock")

    assert asyncio.run(main()) < 1
    assert cleanups == 1
    assert arena.lockfileFD is None
    asyncio.run(arena.enter())  # out: entering again is allowed
    assert asyncio.run(leave_all([arena])) == [True]
    assert os.listdir(shm_dir) == []


def test_a_mutex_wait_that_times_out_names_the_mutex_and_its_holder(
    core: str, lock_dir: Path
) -> None:
    async def wait(timeout: float) -> None:
        async with aio.global_mutex(lock_dir, "jobs", timeout=timeout):
            pytest.fail("the mutex was had while another process held it")

    with held_elsewhere(core, lock_dir, "jobs") as holder:
        for timeout in (0.2, 0):
            started = time.monotonic()
            with pytest.raises(toil_threading.LockTimeout) as raised:
                asyncio.run(wait(timeout))
            elapsed = time.monotonic() - started
            assert timeout <= raised.value.waited <= elapsed
            assert raised.value.path == f"{lock_dir}/toil-mutex-jobs"
            assert (raised.value.name, raised.value.holder) == ("jobs", holder)
            assert f"waiting for mutex 'jobs' ({lock_dir}/toil-mutex-jobs)" in str(raised.value)
    assert elapsed < 0.1  # timeout=0: a single try


def test_arena_waits_that_time_out_name_the_arena(core: str, lock_dir: Path) -> None:
    """An entry that times out is not in; a leave that times out is still in, and leaves
    later as the last one out."""
    entering = aio.LastProcessStandingArena(lock_dir, "pool")
    leaving = aio.LastProcessStandingArena(lock_dir, "pool")
    asyncio.run(leaving.enter())

    async def leave(timeout: float) -> list[bool]:
        return [last async for last in leaving.leave(timeout=timeout)]

    failures = []
    with held_elsewhere(core, lock_dir, "pool-arena-lock") as holder:
        for wait in (entering.enter(timeout=0.1), leave(0.1)):
            with pytest.raises(toil_threading.LockTimeout) as raised:
                asyncio.run(wait)
            failures.append(raised.value)
    for failure in failures:
        assert (failure.name, failure.holder) == ("pool", holder)
        assert failure.path == f"{lock_dir}/toil-mutex-pool-arena-lock"
        assert failure.waited >= 0.1
        assert f"waiting for arena 'pool' ({lock_dir}/toil-mutex-pool-arena-lock)" in str(failure)
    assert entering.lockfileFD is None
    assert leaving.lockfileName is not None
    assert os.listdir(lock_dir / "pool-arena-members") == [leaving.lockfileName]
    assert asyncio.run(leave(5)) == [True]
    assert os.listdir(lock_dir) == []


@pytest.mark.parametrize(
    ("base_dir", "name", "timeout"),
    [
        ("{dir}", "a/b", None),
        ("{dir}", "..", None),
        ("{dir}", "", None),
        ("{dir}", "x" * 300, None),
        ("{dir}", 5, None),
        (b"/tmp", "m", None),
        ("", "m", None),
        ("{dir}/a\0b", "m", None),
        ("{dir}/missing", "m", -1),
        ("{dir}/missing", "m", "1"),
        ("{dir}/missing", "m", True),
        ("{dir}/missing", "m", float("nan")),
    ],
)
def test_bad_mutex_arguments_fail_as_the_synchronous_ones_do(
    core: str, shm_dir: Path, base_dir: object, name: object, timeout: object
) -> None:
    """At the call, before any await, with the synchronous API's exception and words;
    nothing on disk."""
    if isinstance(base_dir, str):
        base_dir = base_dir.format(dir=shm_dir)
    with pytest.raises((TypeError, ValueError)) as synchronous:
        toil_threading.global_mutex(base_dir, name, timeout=timeout)  # type: ignore[arg-type]
    with pytest.raises(synchronous.type, match=f"^{re.escape(str(synchronous.value))}$"):
        aio.global_mutex(base_dir, name, timeout=timeout)  # type: ignore[arg-type]
    assert os.listdir(shm_dir) == []


@pytest.mark.parametrize(
    ("base_dir", "name"),
    [("{dir}", "a/b"), ("{dir}", ".."), ("{dir}", "x" * 250), ("{dir}", None), (b"/tmp", "m")],
)
def test_bad_arena_names_fail_as_the_synchronous_ones_do(
    core: str, shm_dir: Path, base_dir: object, name: object
) -> None:
    if isinstance(base_dir, str):
        base_dir = base_dir.format(dir=shm_dir)
    with pytest.raises((TypeError, ValueError)) as synchronous:
        toil_threading.LastProcessStandingArena(base_dir, name)  # type: ignore[arg-type]
    with pytest.raises(synchronous.type, match=f"^{re.escape(str(synchronous.value))}$"):
        aio.LastProcessStandingArena(base_dir, name)  # type: ignore[arg-type]
    assert os.listdir(shm_dir) == []


@pytest.mark.parametrize("timeout", [-1, "1", True, float("inf")])
def test_bad_arena_timeouts_fail_as_the_synchronous_ones_do(
    core: str, shm_dir: Path, timeout: object
) -> None:
    synchronous = toil_threading.LastProcessStandingArena(shm_dir / "missing", "pool")
    arena = aio.LastProcessStandingArena(shm_dir / "missing", "pool")
    with pytest.raises(ValueError) as refused:
        synchronous.enter(timeout=timeout)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"^{re.escape(str(refused.value))}$"):
        asyncio.run(arena.enter(timeout=timeout))  # type: ignore[arg-type]
    with pytest.raises(ValueError) as refused:
        list(synchronous.leave(timeout=timeout))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"^{re.escape(str(refused.value))}$"):
        asyncio.run(arena.leave(timeout=timeout).__anext__())  # type: ignore[arg-type]
    with pytest.raises(RuntimeError) as refused:
        list(synchronous.leave())
    with pytest.raises(RuntimeError, match=f"^{re.escape(str(refused.value))}$"):
        asyncio.run(leave_all([arena]))
    assert os.listdir(shm_dir) == []
