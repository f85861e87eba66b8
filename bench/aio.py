"""What toil_threading.aio's polling waits cost, on both cores.

    python bench/aio.py [--dir /dev/shm] [--trials 40] [--seconds 2]

Run it with the interpreter of an install that has the compiled core.  Measured, while
another process holds the mutex:

- one try (a non-blocking attempt that finds the mutex busy): CPU and wall time, and the
  system calls it makes (from `strace -c`, where strace is installed);
- tasks waiting in one loop (1 and 20): tries a second per task, the share of a CPU the
  process uses, and the loop's longest stall (a ticker sleeping 1 ms at a time);
- the wait after a release: from the holder's release to the waiter's having the mutex,
  after waits of 20 to 120 ms, beside a synchronous waiter blocked in the kernel.

Benchmarks, not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import toil_threading
from toil_threading import _impl, aio

CORES = {"compiled": "toil_threading._core_c", "pure": "toil_threading._core_py"}

# Holds the mutex "m" in ARGV[1] on "hold", lets go on "release" and then prints the
# time (time.monotonic(), the same clock in every process of the machine).
HOLDER = r"""
import sys, time, toil_threading
for line in sys.stdin:
    mutex = toil_threading.global_mutex(sys.argv[1], "m")
    mutex.__enter__()
    print("held", flush=True)
    sys.stdin.readline()
    mutex.__exit__(None, None, None)
    print(time.monotonic(), flush=True)
"""

# Makes TRIES tries of the busy mutex "m" in ARGV[1], on core ARGV[3].
TRIER = r"""
import importlib, sys, toil_threading
from toil_threading import _impl
_impl.use_core(importlib.import_module(sys.argv[3]))
attempt = toil_threading.global_mutex(sys.argv[1], "m", timeout=0)
for _ in range(int(sys.argv[2])):
    try:
        attempt.__enter__()
    except toil_threading.LockTimeout:
        pass
"""


class Holder:
    """Another process that takes and lets go of the mutex when told."""

    async def start(self, directory: str) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",  # the installed package, never the checkout's
            "-c",
            HOLDER,
            directory,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    async def _say(self, line: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()
        return (await self.process.stdout.readline()).decode().strip()

    async def hold(self) -> None:
        assert await self._say("hold") == "held"

    async def release(self) -> float:
        """When it let go (time.monotonic())."""
        return float(await self._say("release"))

    async def stop(self) -> None:
        self.process.kill()
        await self.process.wait()


class Counted:
    """A synchronous mutex that counts the tries made on it."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.tries = inner, 0

    def __enter__(self) -> None:
        self.tries += 1
        self.inner.__enter__()

    def __exit__(self, *exception: object) -> None:
        self.inner.__exit__(*exception)


def counted_mutex(directory: str) -> tuple[Any, Counted]:
    """An aio mutex "m" whose tries are counted (through its private attempt)."""
    mutex = aio.global_mutex(directory, "m")
    counter = Counted(mutex._attempt)  # type: ignore[attr-defined]
    mutex._attempt = counter  # type: ignore[attr-defined]
    return mutex, counter


def cost_of_a_try(directory: str, tries: int = 2000) -> tuple[float, float]:
    """Microseconds of CPU and of wall time per try of the busy mutex."""
    attempt = toil_threading.global_mutex(directory, "m", timeout=0)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(tries):
        with contextlib.suppress(toil_threading.LockTimeout):
            attempt.__enter__()
    return (
        (time.process_time() - cpu) / tries * 1e6,
        (time.perf_counter() - wall) / tries * 1e6,
    )


def system_calls_per_try(directory: str, core: str, tries: int = 500) -> dict[str, float]:
    """System calls per try, by name, from strace -c of a process making tries against
    one making none; empty without strace."""
    if shutil.which("strace") is None:
        return {}

    def calls(count: int) -> dict[str, int]:
        with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
            strace = ["strace", "-f", "-qq", "-c", "-o", out.name]
            trier = [sys.executable, "-I", "-c", TRIER, directory, str(count), CORES[core]]
            subprocess.run([*strace, *trier], check=True)
            table = out.read().splitlines()
        found = {}
        for line in table:
            fields = line.split()
            if len(fields) >= 5 and fields[3].isdigit() and fields[-1] != "total":
                found[fields[-1]] = int(fields[3])
        return found

    none, some = calls(0), calls(tries)
    per_try = {name: (some[name] - none.get(name, 0)) / tries for name in some}
    return {name: count for name, count in sorted(per_try.items()) if count >= 0.5}


async def waiting_tasks(directory: str, tasks: int, seconds: float) -> dict[str, float]:
    """tasks tasks waiting: tries a second per task and share of a CPU per task over
    seconds; then the longest stall of a 1 ms ticker, over one more second."""
    waiters = [counted_mutex(directory) for _ in range(tasks)]

    async def wait(mutex: Any) -> None:
        async with mutex:
            pass

    running = [asyncio.create_task(wait(mutex)) for mutex, _ in waiters]
    await asyncio.sleep(0.1)  # past the first, shorter pauses
    tries = sum(counter.tries for _, counter in waiters)
    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    tries = sum(counter.tries for _, counter in waiters) - tries
    longest, before = 0.0, time.monotonic()
    for _ in range(1000):
        await asyncio.sleep(0.001)
        now = time.monotonic()
        longest, before = max(longest, now - before - 0.001), now
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    return {
        "tries a second per task": tries / wall / tasks,
        "CPU share per task": cpu / wall / tasks,
        "longest stall (ms)": longest * 1e3,
    }


async def waits_after_release(directory: str, holder: Holder, trials: int) -> dict[str, Any]:
    """Seconds from the holder's release to the waiter's having the mutex: a polling
    task's, and a synchronous waiter's (blocked in the kernel, in a thread)."""

    def blocked() -> float:
        with toil_threading.global_mutex(directory, "m"):
            return time.monotonic()

    async def polling() -> float:
        async with aio.global_mutex(directory, "m"):
            return time.monotonic()

    waits: dict[str, list[float]] = {"aio": [], "blocked in the kernel": []}
    for _ in range(trials):
        for kind in waits:
            await holder.hold()
            waiter = asyncio.ensure_future(
                polling() if kind == "aio" else asyncio.to_thread(blocked)
            )
            await asyncio.sleep(random.uniform(0.02, 0.12))
            released = await holder.release()
            waits[kind].append(await waiter - released)
    return {kind: summary(found) for kind, found in waits.items()}


def summary(waits: list[float]) -> str:
    ordered = sorted(waits)
    tenth = ordered[int(len(ordered) * 0.9)]
    return (
        f"median {statistics.median(ordered) * 1e3:.2f} ms, 90th percentile"
        f" {tenth * 1e3:.2f} ms, most {ordered[-1] * 1e3:.2f} ms"
    )


async def measure(directory: str, core: str, trials: int, seconds: float) -> None:
    holder = Holder()
    await holder.start(directory)
    try:
        await holder.hold()
        cpu, wall = cost_of_a_try(directory)
        print(f"  one try: {cpu:.0f} us of CPU, {wall:.0f} us of wall time")
        calls = system_calls_per_try(directory, core)
        if calls:
            listed = ", ".join(f"{name} {count:g}" for name, count in calls.items())
            print(f"  system calls per try: {sum(calls.values()):g} ({listed})")
        for tasks in (1, 20):
            found = await waiting_tasks(directory, tasks, seconds)
            shown = ", ".join(f"{name} {value:.3g}" for name, value in found.items())
            print(f"  {tasks} waiting task(s): {shown}")
        await holder.release()
        for kind, found in (await waits_after_release(directory, holder, trials)).items():
            print(f"  wait after a release, {kind}: {found}")
    finally:
        await holder.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/dev/shm", help="filesystem to measure on")
    parser.add_argument("--trials", type=int, default=40, help="waits after a release")
    parser.add_argument("--seconds", type=float, default=2.0, help="time tasks wait")
    options = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {options.dir}")
    for core, module in CORES.items():
        _impl.use_core(importlib.import_module(module))
        print(f"{core} core:")
        with tempfile.TemporaryDirectory(dir=options.dir) as directory:
            asyncio.run(measure(directory, core, options.trials, options.seconds))


if __name__ == "__main__":
    main()
