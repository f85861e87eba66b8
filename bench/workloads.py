"""The benchmark operations in Python, over any module with toil_threading's API.

bench/run.py imports this for toil_threading's cores and filelock.  For Toil's own
module, which may live in another interpreter, it runs this file as a script there:

    python workloads.py --api toil --dir DIR --task JSON

which prints the repeats' figures as one JSON list.  The operations, and the figures of
a contended run, match bench/floor.c's.
"""

from __future__ import annotations

import argparse
import json
import math
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
DATA = "bench-data"  # written while holding the mutex, in "contend-work"

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
    "contend", "contend-work" and "contend-arena" (which run for `seconds`).
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


# Wait times are binned as floor.c bins them: one bucket per nanosecond below 32 ns, then
# sixteen per power of two (about 6% wide); waits of 2**36 ns (69 s) or more share the last.
WAIT_LONGEST = 2**36 - 1
WAIT_BUCKETS = 528


def wait_bucket(ns: int) -> int:
    if ns < 32:
        return max(ns, 0)
    ns = min(ns, WAIT_LONGEST)
    exponent = ns.bit_length() - 1
    return (exponent - 3) * 16 + ((ns >> (exponent - 4)) & 15)


def bucket_middle(bucket: int) -> float:
    """The middle of a bucket's range of nanoseconds."""
    if bucket < 32:
        return float(bucket)
    exponent, step = bucket // 16 + 3, bucket % 16
    width = 1 << (exponent - 4)
    return (16 + step) * width + (width - 1) / 2


def wait_percentile(histogram: list[list[int]], longest: int, fraction: float) -> float:
    """The wait (ns) that `fraction` of all waits do not exceed, by nearest rank, read
    from the [bucket, count] pairs (the bucket's middle: within 3%); NaN without waits."""
    total = sum(count for _, count in histogram)
    if total == 0:
        return float("nan")
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for bucket, count in sorted(histogram):
        seen += count
        if seen >= rank:
            return min(bucket_middle(bucket), float(longest))
    return float(longest)


class Contest:
    """What the contending processes share: when to start, and what each did."""

    def __init__(self, context: Any, processes: int) -> None:
        self.start_ns = context.Value("q", 0, lock=False)
        self.acquisitions = context.Array("q", processes, lock=False)
        self.longest_wait_ns = context.Array("q", processes, lock=False)
        self.wait_histograms = context.Array("I", processes * WAIT_BUCKETS, lock=False)

    def report(self, index: int, waits: list[int]) -> None:
        """One process's waits, binned after its run into its share of the memory."""
        histogram = [0] * WAIT_BUCKETS
        for wait in waits:
            histogram[wait_bucket(wait)] += 1
        self.acquisitions[index] = len(waits)
        self.longest_wait_ns[index] = max(waits, default=0)
        self.wait_histograms[index * WAIT_BUCKETS : (index + 1) * WAIT_BUCKETS] = histogram

    def run(self, seconds: float) -> dict[str, Any]:
        """The run as floor.c prints it (see its header)."""
        merged = [0] * WAIT_BUCKETS
        histograms = self.wait_histograms[:]
        for offset in range(0, len(histograms), WAIT_BUCKETS):
            for bucket, count in enumerate(histograms[offset : offset + WAIT_BUCKETS]):
                merged[bucket] += count
        acquisitions = list(self.acquisitions)
        return {
            "per_second": sum(acquisitions) / seconds,
            "acquisitions": acquisitions,
            "longest_wait_ns": max(self.longest_wait_ns, default=0),
            "wait_histogram": [[bucket, count] for bucket, count in enumerate(merged) if count],
        }


# A contending process's loop.  Each keeps its waits in a list during the run (an append,
# nothing more) and bins them afterwards; only acquisitions had by the deadline count.
# The clock is CLOCK_MONOTONIC, as floor.c's.


def contend_mutex(
    api: Any, directory: str, deadline: int, work: Callable[[], None] | None = None
) -> list[int]:
    """Take and release the mutex, calling work (if any) while holding it; the time each
    acquisition took (ns)."""
    clock = time.perf_counter_ns
    waits: list[int] = []
    record = waits.append
    while True:
        began = clock()
        with api.global_mutex(directory, MUTEX):
            had = clock()
            if work is not None:
                work()
        if had > deadline:
            return waits
        record(had - began)


def contend_working(api: Any, directory: str, deadline: int) -> list[int]:
    """contend_mutex, opening the data file, writing this process's count of writes at its
    start and closing it while holding the mutex (floor.c's critical_work)."""
    path = os.path.join(directory, DATA)
    written = 0

    def work() -> None:
        nonlocal written
        written += 1
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.pwrite(fd, written.to_bytes(8, "little"), 0)
        os.close(fd)

    return contend_mutex(api, directory, deadline, work)


def contend_arena(api: Any, directory: str, deadline: int) -> list[int]:
    """Enter and leave the arena; the time each enter() took (ns)."""
    arena = api.LastProcessStandingArena(directory, ARENA)
    clock = time.perf_counter_ns
    waits: list[int] = []
    record = waits.append
    while True:
        began = clock()
        arena.enter()
        had = clock()
        for _ in arena.leave():
            pass
        if had > deadline:
            return waits
        record(had - began)


CONTESTS = {
    "contend": contend_mutex,
    "contend-work": contend_working,
    "contend-arena": contend_arena,
}


def contended_run(
    api: Any, operation: str, directory: str, processes: int, seconds: float
) -> dict[str, Any]:
    """`processes` forked processes contending for `seconds`: see Contest.run."""
    context = multiprocessing.get_context("fork")
    contest = Contest(context, processes)
    loop = CONTESTS[operation]

    def stamp_start() -> None:
        contest.start_ns.value = time.perf_counter_ns()

    # Everyone starts together once all are forked; the last to arrive stamps the start.
    barrier = context.Barrier(processes, action=stamp_start, timeout=CONTENTION_GRACE)

    def child(index: int) -> None:
        barrier.wait()
        deadline = contest.start_ns.value + round(seconds * 1e9)
        contest.report(index, loop(api, directory, deadline))

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
    return contest.run(seconds)


def measure(api: Any, task: Task, directory: str) -> list[Any]:
    """A task's figure for each repeat: ns per operation, or for contention a run (a dict,
    as floor.c prints it)."""
    if task.operation in CONTESTS:
        return [
            contended_run(api, task.operation, directory, task.count, task.seconds)
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
