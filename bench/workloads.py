"""The benchmark operations in Python, over any module with toil_threading's API.

bench/run.py imports this for toil_threading's cores and filelock.  For Toil's own
module, which may live in another interpreter, it runs this file as a script there:

    python workloads.py --api toil --dir DIR --task JSON

which prints the samples as one JSON list.  The operations match bench/floor.c's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The names floor.c uses, so every implementation works on the same files.
MUTEX = "bench"
ARENA = "bench"
MEMBERS = ARENA + "-arena-members"

# A figure made by a slow implementation stops growing its loop at this many seconds
# per repeat (Toil's global_mutex starts a subprocess per call).
REPEAT_BUDGET = 0.5
WARM_UP = 200
# Iterations timed at a stretch (fewer than the usual limit of 1024 descriptors).
STRETCH = 500
# How long the contending processes may overrun their time before they count as stuck.
CONTENTION_GRACE = 60.0


@dataclass
class Task:
    """One figure to measure: an operation, its size and how many repeats.

    count is iterations per repeat, dead members for "arena-cleanup", processes for
    "contend" (which runs for `seconds`).
    """

    operation: str
    count: int
    repeats: int
    seconds: float = 0.0


def mutex_round_trips(api: Any, directory: str, n: int) -> None:
    for _ in range(n):
        with api.global_mutex(directory, MUTEX):
            pass


def arena_cycles(api: Any, directory: str, n: int) -> None:
    arena = api.LastProcessStandingArena(directory, ARENA)
    for _ in range(n):
        arena.enter()
        for _ in arena.leave():
            pass


def name_cycles(api: Any, directory: str, n: int) -> None:
    """Get a name, poll it (alive), give it up: what floor.c's name-live does."""
    for _ in range(n):
        name = api.get_process_name(directory)
        if not api.process_name_exists(directory, name):
            raise AssertionError(f"our own name {name} was reported dead")
        api.destroy_all_process_names()


def make_dead_files(directory: str, n: int) -> list[str]:
    """Unlocked files named like names or members: what dead processes leave behind."""
    names: list[str] = []
    while len(names) < n:
        name = "tmp" + os.urandom(6).hex()[:8]
        try:
            os.close(
                os.open(os.path.join(directory, name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            )
        except FileExistsError:
            continue
        names.append(name)
    return names


Loop = Callable[[Any, str, int], None]
LOOPS: dict[str, Loop] = {
    "mutex": mutex_round_trips,
    "arena": arena_cycles,
    "name-live": name_cycles,
}


def open_descriptors() -> set[int]:
    """This process's open descriptors (less the one that listed them, closed by now)."""
    listed = {int(fd) for fd in os.listdir("/proc/self/fd")}
    return {fd for fd in listed if is_open(fd)}


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def close_new_descriptors(before: set[int]) -> None:
    for fd in open_descriptors() - before:
        os.close(fd)


def time_loop(loop: Loop, api: Any, directory: str, n: int) -> float:
    """Nanoseconds per iteration of loop, after an untimed warm-up (like floor.c).

    The loop is timed in stretches of STRETCH iterations; descriptors left open are
    closed between them, untimed: Toil never closes its name files, and would run out.
    """
    before = open_descriptors()
    loop(api, directory, min(n, WARM_UP))
    close_new_descriptors(before)
    elapsed = 0
    for done in range(0, n, STRETCH):
        start = time.perf_counter_ns()
        loop(api, directory, min(STRETCH, n - done))
        elapsed += time.perf_counter_ns() - start
        close_new_descriptors(before)
    return elapsed / n


def affordable(loop: Loop, api: Any, directory: str, n: int) -> int:
    """n, or fewer iterations if n would take more than REPEAT_BUDGET seconds."""
    per_iteration = time_loop(loop, api, directory, min(n, 20)) * 1e-9
    return max(10, min(n, int(REPEAT_BUDGET / per_iteration)))


def dead_name_polls(api: Any, directory: str, n: int) -> float:
    """Nanoseconds per poll of a dead name; the dead names are made first, untimed."""
    names = make_dead_files(directory, n)
    start = time.perf_counter_ns()
    for name in names:
        if api.process_name_exists(directory, name):
            raise AssertionError(f"the dead name {name} was reported alive")
    return (time.perf_counter_ns() - start) / n


def cleanup_leave(api: Any, directory: str, members: int) -> float:
    """Nanoseconds of one leave() that finds `members` dead members, made first untimed."""
    arena = api.LastProcessStandingArena(directory, ARENA)
    arena.enter()
    make_dead_files(os.path.join(directory, MEMBERS), members)
    start = time.perf_counter_ns()
    for _ in arena.leave():
        pass
    return float(time.perf_counter_ns() - start)


def contend(api: Any, directory: str, start: Any, counts: Any, index: int, seconds: float) -> None:
    """One contending process: take and release the mutex until the time is up."""
    deadline = start.value + seconds
    count = 0
    while True:
        with api.global_mutex(directory, MUTEX):
            pass
        if time.monotonic() > deadline:
            break
        count += 1
    counts[index] = count


def contended_throughput(api: Any, directory: str, processes: int, seconds: float) -> float:
    """Acquisitions per second of one mutex by `processes` forked processes, in total."""
    context = multiprocessing.get_context("fork")
    start = context.Value("d", 0.0, lock=False)
    counts = context.Array("q", processes, lock=False)

    def stamp_start() -> None:
        start.value = time.monotonic()

    # Everyone starts together once all are forked; the last to arrive stamps the start.
    barrier = context.Barrier(processes, action=stamp_start, timeout=CONTENTION_GRACE)

    def child(index: int) -> None:
        barrier.wait()
        contend(api, directory, start, counts, index, seconds)

    children = [context.Process(target=child, args=(i,)) for i in range(processes)]
    try:
        for process in children:
            process.start()
        give_up = time.monotonic() + CONTENTION_GRACE + seconds
        for process in children:
            process.join(max(0.0, give_up - time.monotonic()))
        stuck = [process.pid for process in children if process.is_alive()]
        failed = [process.exitcode for process in children if process.exitcode not in (0, None)]
        if stuck or failed:
            raise RuntimeError(
                f"contending processes stuck {stuck} or failed (exit codes {failed})"
            )
    finally:
        for process in children:
            if process.is_alive():
                process.kill()
            if process.pid is not None:
                process.join()
    return float(sum(counts)) / seconds


def measure(api: Any, task: Task, directory: str) -> list[float]:
    """The samples of a task: ns per operation per repeat, or acquisitions per second."""
    if task.operation == "contend":
        return [
            contended_throughput(api, directory, task.count, task.seconds)
            for _ in range(task.repeats)
        ]
    if task.operation == "arena-cleanup":
        return [cleanup_leave(api, directory, task.count) for _ in range(task.repeats)]
    if task.operation == "name-dead":
        return [dead_name_polls(api, directory, task.count) for _ in range(task.repeats)]
    loop = LOOPS[task.operation]
    n = affordable(loop, api, directory, task.count)
    return [time_loop(loop, api, directory, n) for _ in range(task.repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure one task with Toil's own module.")
    parser.add_argument("--api", choices=["toil"], required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--task", required=True, help="the Task as a JSON object")
    args = parser.parse_args()
    import toil.lib.threading as api

    print(json.dumps(measure(api, Task(**json.loads(args.task)), args.dir)))


if __name__ == "__main__":
    main()
