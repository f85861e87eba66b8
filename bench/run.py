"""Benchmark toil_threading against the system-call floor, Toil's own module and filelock.

    python bench/run.py [--quick] [--dir /dev/shm] [--processes 2,8,32,64]
                        [--json [FILE]] [--plot FILE.png] [--toil-python PYTHON]

See bench/README.md.  Run it with the interpreter of an installed toil_threading that
has its compiled core; it refuses to run otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))  # for workloads.py: python -I leaves this folder off sys.path

from workloads import Task, measure, wait_percentile  # noqa: E402

FLOOR = "naive floor"
DIRREL_FLOOR = "dir-relative floor"
# Contending processes by default: these where fewer than MANY_CPUS CPUs are available
# (toil_threading.cpu_count()), the others where as many or more are.
PROCESS_COUNTS = (2, 8, 32, 64)
MANY_CPUS = 16
MANY_CPUS_PROCESS_COUNTS = (1, 2, 8, 16, 64, 256)
# How long one floor or Toil subprocess may take before the run is called stuck.
SUBPROCESS_TIMEOUT = 600


@dataclass(frozen=True)
class Plan:
    """Sizes of a run: per operation (count, repeats), contention and cold starts."""

    sizes: dict[str, tuple[int, int]]
    contention_seconds: float
    contention_repeats: int
    arena_contention_seconds: float
    arena_contention_repeats: int
    cold_start_runs: int


PLANS = {
    "full": Plan(
        {
            "mutex": (20000, 7),
            "arena": (5000, 7),
            "arena-cleanup": (1000, 11),
            "name-live": (20000, 7),
            "name-dead": (5000, 7),
        },
        contention_seconds=1.0,
        contention_repeats=5,
        arena_contention_seconds=0.5,
        arena_contention_repeats=3,
        cold_start_runs=20,
    ),
    "quick": Plan(
        {
            "mutex": (2000, 3),
            "arena": (500, 3),
            "arena-cleanup": (1000, 3),
            "name-live": (2000, 3),
            "name-dead": (1000, 3),
        },
        contention_seconds=0.2,
        contention_repeats=2,
        arena_contention_seconds=0.2,
        arena_contention_repeats=2,
        cold_start_runs=10,
    ),
}

# Operation: (title, unit shown, nanoseconds per unit; None for a throughput).
OPERATIONS: dict[str, tuple[str, str, float | None]] = {
    "mutex": ("global_mutex round trip", "us", 1e3),
    "arena": ("arena enter + leave (alone: mkdir, rmdir each time)", "us", 1e3),
    "arena-cleanup": ("arena leave() cleaning 1,000 dead members", "ms", 1e6),
    "name-live": ("process name: get + poll (alive) + destroy", "us", 1e3),
    "name-dead": ("process name: poll a dead name (removes it)", "us", 1e3),
    "contend": ("contended global_mutex, {}", "acquisitions/s", None),
    "contend-work": (
        "contended global_mutex with work in the critical section (open, pwrite, close), {}",
        "acquisitions/s",
        None,
    ),
    "contend-arena": ("contended arena enter + leave, {}", "enter+leave pairs/s", None),
}
CONTENTION = frozenset({"contend", "contend-work", "contend-arena"})
# The mutex figures, the only ones of filelock and of the fewest, keep and announce floors.
MUTEX_OPERATIONS = frozenset({"mutex", "contend", "contend-work"})


@dataclass
class Implementation:
    """Something measured: a name, how it measures a task in a directory, what it can do."""

    name: str
    measure: Callable[[Task, str], list[float]]
    operations: frozenset[str] = frozenset(OPERATIONS)


@dataclass
class ContendedRun:
    """One repeat of a contended figure: its throughput and how evenly it was shared."""

    per_second: float
    acquisitions: list[int]  # per process (enter + leave pairs for the arena)
    acquisitions_min: int
    acquisitions_median: float
    acquisitions_max: int
    jain_index: float  # (sum x)^2 / (n sum x^2): 1 when all processes had as many
    # How long each acquisition took (each enter() for the arena), microseconds; p50 and
    # p99 from the histogram's buckets (within about 3%), the longest exact.
    wait_p50_us: float
    wait_p99_us: float
    wait_max_us: float
    wait_histogram: list[list[int]]  # [bucket, count] pairs: workloads.wait_bucket
    longest_wait_ns: int


# The fairness figures shown for a contended figure: the median of each over its runs.
FAIRNESS = (
    "jain_index",
    "acquisitions_min",
    "acquisitions_median",
    "acquisitions_max",
    "wait_p50_us",
    "wait_p99_us",
    "wait_max_us",
)


@dataclass
class Result:
    operation: str
    title: str
    unit: str
    implementation: str
    samples: list[float]  # per repeat, in `unit`
    median: float
    low: float
    high: float
    processes: int = 0  # contending processes, for the CONTENTION operations
    ratio_to_floor: float = float("nan")  # median / the naive floor's median
    ratio_to_dirrel: float = float("nan")  # median / the dir-relative floor's median
    runs: list[ContendedRun] = dataclasses.field(default_factory=list)  # contention only
    fairness: dict[str, float] = dataclasses.field(default_factory=dict)  # FAIRNESS medians


def fail(message: str) -> NoReturn:
    sys.exit(f"bench/run.py: {message}")


def load_toil_threading() -> Any:
    """The installed toil_threading, refusing to go on without its compiled core."""
    try:
        import toil_threading

        importlib.import_module("toil_threading._core_c")
    except ImportError as error:
        fail(
            f"the compiled core toil_threading._core_c does not import ({error}).\n"
            "Install the package with a C compiler and run this with the installed copy,\n"
            "from the repo root (the script's folder, bench/, is what goes on sys.path):\n"
            "    python3 -m venv .venv && .venv/bin/pip install . &&"
            " .venv/bin/python bench/run.py\n"
            "(not `python -m bench.run`, which imports the checkout's toil_threading/ folder,\n"
            "where no compiled core is built)."
        )
    return toil_threading


def environment(directory: str, toil_threading: Any) -> dict[str, str]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    filesystem = subprocess.run(
        ["stat", "-f", "-c", "%T", directory], capture_output=True, text=True, check=True
    ).stdout.strip()
    return {
        "python": (
            f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})"
        ),
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu": f"{cpu} x {os.cpu_count()}",
        "directory": f"{directory} ({filesystem})",
        "toil_threading": f"{toil_threading.__file__}; default core: "
        + (
            "compiled (ACCELERATED=True)"
            if toil_threading.ACCELERATED
            else "pure (ACCELERATED=False)"
        ),
    }


def build_floor(workdir: str) -> str:
    binary = os.path.join(workdir, "floor")
    compiler = shutil.which("cc")
    if compiler is None:
        fail("no C compiler `cc` on PATH to build bench/floor.c")
    built = subprocess.run(
        [compiler, "-O2", "-Wall", "-Wextra", "-o", binary, str(BENCH / "floor.c")],
        check=False,
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        fail(f"cc -O2 bench/floor.c failed:\n{built.stderr}")
    return binary


def run_json(command: list[str], env: dict[str, str] | None = None) -> Any:
    """The last line of a command's output, as JSON; the command must succeed."""
    done = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, env=env
    )
    if done.returncode != 0:
        fail(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def floor(
    binary: str, variant: str, name: str, operations: frozenset[str] = frozenset(OPERATIONS)
) -> Implementation:
    def measure_task(task: Task, directory: str) -> list[Any]:
        contention = task.operation in CONTENTION
        sizes = [task.count, round(task.seconds * 1000)] if contention else [task.count]
        command = [binary, variant, directory, task.operation, *map(str, sizes), str(task.repeats)]
        printed = run_json(command)
        return printed["runs"] if contention else [float(sample) for sample in printed["samples"]]

    return Implementation(name, measure_task, operations)


def core(toil_threading: Any, module: str, name: str) -> Implementation:
    """toil_threading in this process, switched to the given core for the task."""

    def measure_task(task: Task, directory: str) -> list[Any]:
        default = toil_threading._impl.core
        toil_threading._impl.use_core(importlib.import_module(module))
        try:
            return measure(toil_threading, task, directory)
        finally:
            toil_threading._impl.use_core(default)

    return Implementation(name, measure_task)


def toil_implementation(python: str | None) -> tuple[Implementation | None, str | None]:
    """Toil's own module, from the interpreter named, else from this one if it has it.

    Also returns the interpreter that has it (for the cold start), or None.
    """
    if python:
        check = subprocess.run(
            [python, "-c", "import toil.lib.threading"],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check.returncode != 0:
            fail(f"{python} cannot import toil.lib.threading:\n{check.stderr}")

        def measure_in_subprocess(task: Task, directory: str) -> list[Any]:
            script = [python, str(BENCH / "workloads.py"), "--api", "toil", "--dir", directory]
            return list(run_json([*script, "--task", json.dumps(asdict(task))]))

        return Implementation("Toil's module", measure_in_subprocess), python
    try:
        import toil.lib.threading as toil_module
    except ImportError:
        return None, None
    return Implementation(
        "Toil's module", lambda task, directory: measure(toil_module, task, directory)
    ), sys.executable


class FileLockMutexes:
    """filelock behind global_mutex(): one FileLock per path, made once, as it is used."""

    def __init__(self) -> None:
        import filelock

        self.filelock = filelock
        self.locks: dict[str, Any] = {}

    def global_mutex(self, directory: str, name: str) -> Any:
        path = os.path.join(directory, f"{name}.lock")
        lock = self.locks.get(path)
        if lock is None:
            lock = self.locks[path] = self.filelock.FileLock(path)
        return lock


def filelock_implementation() -> Implementation | None:
    try:
        mutexes = FileLockMutexes()
    except ImportError:
        return None
    return Implementation(
        "filelock", lambda task, directory: measure(mutexes, task, directory), MUTEX_OPERATIONS
    )


def contenders(
    toil_threading: Any,
    floor_binary: str,
    toil_python: str | None,
    env: dict[str, str],
    notes: list[str],
) -> tuple[list[Implementation], str | None]:
    """Everything to measure, the floors first; also the interpreter that has Toil.

    Says in env and notes what is compared and what is left out.
    """
    implementations = [
        floor(floor_binary, "naive", FLOOR),
        floor(floor_binary, "dirrel", DIRREL_FLOOR),
        floor(floor_binary, "fewest", "fewest-calls floor", MUTEX_OPERATIONS),
        floor(floor_binary, "keep", "keep-file floor", MUTEX_OPERATIONS),
        floor(floor_binary, "announce", "announce floor", MUTEX_OPERATIONS),
        core(toil_threading, "toil_threading._core_c", "compiled core"),
        core(toil_threading, "toil_threading._core_py", "pure core"),
    ]
    toil, toil_python = toil_implementation(toil_python)
    if toil:
        implementations.append(toil)
        env["Toil"] = f"toil.lib.threading run by {toil_python}"
        notes.append(
            "Toil's global_mutex starts a `stat -f` subprocess on every acquisition (its filesystem"
            " check), so its mutex and arena loops are cut to about 0.5 s per repeat."
        )
        notes.append(
            "Toil's process_name_exists answers for this process's own name from memory:"
            " its name-live figure has no poll in it."
        )
    else:
        notes.append(
            "Toil's module not measured: no toil.lib.threading here; pass --toil-python PYTHON."
        )
    filelock = filelock_implementation()
    if filelock:
        implementations.append(filelock)
        env["filelock"] = importlib.metadata.version("filelock")
        notes.append(
            "filelock keeps its lock file (no unlink, no same-file check) and waits by polling."
        )
    else:
        notes.append("filelock not measured: it does not import here.")
    notes.append(
        "The fewest-calls, keep-file and announce floors make the mutex figures only;"
        " bench/README.md lists every floor's system calls."
    )
    return implementations, toil_python


def tasks(plan: Plan, process_counts: tuple[int, ...]) -> list[Task]:
    listed = [Task(operation, count, repeats) for operation, (count, repeats) in plan.sizes.items()]
    for operation in ("contend", "contend-work"):
        for processes in process_counts:
            listed.append(
                Task(operation, processes, plan.contention_repeats, plan.contention_seconds)
            )
    for processes in process_counts:
        listed.append(
            Task(
                "contend-arena",
                processes,
                plan.arena_contention_repeats,
                plan.arena_contention_seconds,
            )
        )
    return listed


def jain_index(counts: list[int]) -> float:
    """Jain's fairness index: 1 when all had as many, 1/n when one had everything."""
    squares = sum(count * count for count in counts)
    return sum(counts) ** 2 / (len(counts) * squares) if squares else float("nan")


def contended_run(printed: dict[str, Any]) -> ContendedRun:
    """A run as floor.c and workloads.py print it, with its fairness worked out."""
    counts = [int(count) for count in printed["acquisitions"]]
    histogram = [[int(bucket), int(count)] for bucket, count in printed["wait_histogram"]]
    longest = int(printed["longest_wait_ns"])
    return ContendedRun(
        per_second=float(printed["per_second"]),
        acquisitions=counts,
        acquisitions_min=min(counts),
        acquisitions_median=statistics.median(counts),
        acquisitions_max=max(counts),
        jain_index=jain_index(counts),
        wait_p50_us=wait_percentile(histogram, longest, 0.50) / 1e3,
        wait_p99_us=wait_percentile(histogram, longest, 0.99) / 1e3,
        wait_max_us=longest / 1e3 if histogram else float("nan"),
        wait_histogram=histogram,
        longest_wait_ns=longest,
    )


def finite_median(values: list[float]) -> float:
    """The median of the values that could be had (a run without acquisitions has no
    waits and no Jain's index); NaN if none could."""
    finite = [value for value in values if math.isfinite(value)]
    return statistics.median(finite) if finite else float("nan")


def summarise(task: Task, implementation: str, raw: list[Any]) -> Result:
    title, unit, scale = OPERATIONS[task.operation]
    runs = [contended_run(run) for run in raw] if task.operation in CONTENTION else []
    fairness: dict[str, float] = {}
    if runs:
        samples = [run.per_second for run in runs]
        for name in FAIRNESS:
            fairness[name] = finite_median([getattr(run, name) for run in runs])
    else:
        samples = [sample / scale for sample in raw] if scale else raw
    return Result(
        operation=task.operation,
        title=title.format(f"{task.count} process{'' if task.count == 1 else 'es'}"),
        unit=unit,
        implementation=implementation,
        samples=samples,
        median=statistics.median(samples),
        low=min(samples),
        high=max(samples),
        processes=task.count if runs else 0,
        runs=runs,
        fairness=fairness,
    )


def run_benchmarks(
    implementations: list[Implementation], plan: Plan, root: str, process_counts: tuple[int, ...]
) -> list[Result]:
    """Every task for every implementation that does it.

    The repeats go round the implementations (one repeat of each, then the next), so that
    whatever else the machine does meanwhile falls evenly on all of them; each repeat
    works in a fresh directory.
    """
    results = []
    for task in tasks(plan, process_counts):
        taking_part = [
            implementation
            for implementation in implementations
            if task.operation in implementation.operations
        ]
        figures: dict[str, list[Any]] = {implementation.name: [] for implementation in taking_part}
        one_repeat = dataclasses.replace(task, repeats=1)
        for repeat in range(task.repeats):
            print(
                f"  {task.operation} {task.count}: repeat {repeat + 1} of {task.repeats}",
                file=sys.stderr,
                flush=True,
            )
            for implementation in taking_part:
                directory = tempfile.mkdtemp(dir=root)
                try:
                    figures[implementation.name] += implementation.measure(one_repeat, directory)
                finally:
                    shutil.rmtree(directory)
        rows = [summarise(task, name, raw) for name, raw in figures.items()]
        medians = {row.implementation: row.median for row in rows}
        for row in rows:
            row.ratio_to_floor = row.median / medians[FLOOR]
            row.ratio_to_dirrel = row.median / medians[DIRREL_FLOOR]
        results += rows
    return results


def wall_time_ms(command: list[str], workdir: str) -> float:
    """Milliseconds from starting command to its exit, which must be a success.

    The wait blocks in the kernel: subprocess's wait with a timeout polls with growing
    sleeps, which would round the figure up (to 15.8 ms for a 9 ms run).  A timer kills a
    command stuck for two minutes instead.
    """
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=workdir)
    watchdog = threading.Timer(120, process.kill)
    watchdog.start()
    try:
        returncode = process.wait()
    finally:
        watchdog.cancel()
    elapsed = (time.perf_counter() - start) * 1e3
    if returncode != 0:
        fail(f"{' '.join(command)} failed ({returncode})")
    return elapsed


def cold_starts(
    runs: int, interpreters: list[tuple[str, str, str]], workdir: str
) -> list[dict[str, Any]]:
    """Wall-clock milliseconds of fresh interpreters running code, interleaved to share drift.

    interpreters: (label, python, code); the first of each python is its bare baseline.
    """
    timings: list[list[float]] = [[] for _ in interpreters]
    for attempt in range(runs + 1):  # the first round only warms the page cache
        for (_, python, code), samples in zip(interpreters, timings, strict=True):
            milliseconds = wall_time_ms([python, "-c", code], workdir)
            if attempt:
                samples.append(milliseconds)
    rows = []
    baselines: dict[str, float] = {}
    for (label, python, code), samples in zip(interpreters, timings, strict=True):
        median = statistics.median(samples)
        baselines.setdefault(python, median)
        rows.append(
            {
                "label": label,
                "python": python,
                "code": code,
                "samples_ms": samples,
                "median_ms": median,
                "low_ms": min(samples),
                "high_ms": max(samples),
                "over_bare_ms": median - baselines[python],
            }
        )
    return rows


def interpreter(value: str) -> str:
    """An interpreter named on the command line, as a path that works from any directory
    (the cold starts run in a temporary one)."""
    return os.path.abspath(value) if os.sep in value else shutil.which(value) or value


def cold_start_plan(toil_python: str | None) -> list[tuple[str, str, str]]:
    bare = "import os; os.cpu_count()"
    interpreters = [
        ("bare interpreter", sys.executable, bare),
        ("toil_threading", sys.executable, "import toil_threading as t; t.cpu_count()"),
    ]
    if toil_python:
        if toil_python != sys.executable:
            interpreters.append(("bare interpreter (Toil's)", toil_python, bare))
        interpreters.append(
            ("Toil's module", toil_python, "import toil.lib.threading as t; t.cpu_count()")
        )
    return interpreters


# What each question a walk asks costs in system calls, as bench/floor.c's cpu-walk makes
# them: by the name of the function asked (the cores' readers take (directory, path)).
WALK_STEPS = {
    "_online_now": lambda arguments: "online",
    "_affinity_now": lambda arguments: "affinity",
    "_identity": lambda arguments: f"stat {arguments[0]}",
    "cgroup_membership": lambda arguments: f"read {arguments[1]}",
    "mount_table": lambda arguments: f"read {arguments[1]}",
    "cpu_max": lambda arguments: f"read {arguments[1]}",
    "cfs_figure": lambda arguments: f"read {arguments[1]}",
    "cpu_list_size": lambda arguments: f"read {arguments[1]}",
    "read_bounded": lambda arguments: f"read {arguments[1]}",
}


def walk_floor(toil_threading: Any, floor_binary: str, repeats: int) -> dict[str, Any]:
    """The system calls of the last cpu_count(refresh=True), made by bench/floor.c."""
    toil_threading.cpu_count(refresh=True)
    cpu = importlib.import_module("toil_threading._cpu")
    steps = [
        WALK_STEPS[function.__name__](arguments)
        for function, arguments, _ in cpu._seen
        if function.__name__ in WALK_STEPS
    ]
    command = [floor_binary, "naive", "/", "cpu-walk", "2000", str(repeats)]
    printed = run_json(command, env={**os.environ, "FLOOR_WALK": "\n".join(steps)})
    timings = [float(sample) for sample in printed["samples"]]
    return {"label": "the walk's system calls (C floor)", "ns": min(timings), "samples_ns": timings}


def cpu_count_costs(toil_threading: Any, floor_binary: str, repeats: int) -> list[dict[str, Any]]:
    """Nanoseconds per call of cpu_count() (kept, rechecked, walked) and of os's answers.

    In this process, the best of `repeats` timings each (the least disturbed).  The
    recheck is the once-a-second look at what the last walk read; the walk is
    cpu_count(refresh=True), both on each core, beside the floor of its system calls.
    """
    cpu = importlib.import_module("toil_threading._cpu")

    def recheck() -> None:
        cpu._recheck_at = float("-inf")
        toil_threading.cpu_count()

    def walk() -> None:
        toil_threading.cpu_count(refresh=True)

    # (label, core module or None for the one in use, call, calls per timing)
    calls: list[tuple[str, str | None, Callable[[], object], int]] = [
        ("os.cpu_count()", None, os.cpu_count, 100_000),
        ("len(os.sched_getaffinity(0))", None, lambda: len(os.sched_getaffinity(0)), 100_000),
        ("cpu_count(), kept", None, toil_threading.cpu_count, 1_000_000),
    ]
    for core_name, module in (("compiled", "_core_c"), ("pure", "_core_py")):
        calls.append((f"cpu_count(), rechecked ({core_name})", module, recheck, 2_000))
        calls.append((f"cpu_count(refresh=True) ({core_name})", module, walk, 2_000))
    default = toil_threading._impl.core
    rows = []
    try:
        for label, module, call, number in calls:
            if module:
                toil_threading._impl.use_core(importlib.import_module("toil_threading." + module))
            call()
            timings = [timeit.timeit(call, number=number) / number * 1e9 for _ in range(repeats)]
            rows.append({"label": label, "ns": min(timings), "samples_ns": timings})
    finally:
        toil_threading._impl.use_core(default)
        toil_threading.cpu_count(refresh=True)
    rows.append(walk_floor(toil_threading, floor_binary, repeats))
    for row in rows:
        row["x_os_cpu_count"] = row["ns"] / rows[0]["ns"]
    return rows


def figure(value: float, unit: str) -> str:
    return f"{value:,.0f}" if unit.endswith("/s") else f"{value:.2f}"


def count_figure(value: float) -> str:
    return f"{value:,.0f}" if math.isfinite(value) else "-"


def wait_figure(microseconds: float) -> str:
    if not math.isfinite(microseconds):
        return "-"
    return f"{microseconds:,.0f}" if microseconds >= 100 else f"{microseconds:.1f}"


def write_fairness(out: TextIO, rows: list[Result]) -> None:
    """How evenly a contended figure was shared, and how long acquisitions took."""
    what = "pairs" if rows[0].operation == "contend-arena" else "acquisitions"
    took = "each enter()" if rows[0].operation == "contend-arena" else "each acquisition"
    print(
        f"  fairness (medians over repeats): Jain's index and {what} per process;"
        f" time {took} took (us)",
        file=out,
    )
    print(
        f"  {'implementation':22}{'Jain':>7}{'min':>10}{'median':>10}{'max':>10}"
        f"{'wait p50':>10}{'p99':>9}{'max':>9}",
        file=out,
    )
    for row in rows:
        fair = row.fairness
        jain = f"{fair['jain_index']:.3f}" if math.isfinite(fair["jain_index"]) else "-"
        print(
            f"  {row.implementation:22}{jain:>7}"
            f"{count_figure(fair['acquisitions_min']):>10}"
            f"{count_figure(fair['acquisitions_median']):>10}"
            f"{count_figure(fair['acquisitions_max']):>10}"
            f"{wait_figure(fair['wait_p50_us']):>10}"
            f"{wait_figure(fair['wait_p99_us']):>9}"
            f"{wait_figure(fair['wait_max_us']):>9}",
            file=out,
        )


def write_table(
    out: TextIO,
    env: dict[str, str],
    results: list[Result],
    cold: list[dict[str, Any]],
    cpus: list[dict[str, Any]],
    notes: list[str],
) -> None:
    for key, value in env.items():
        print(f"{key + ':':16}{value}", file=out)
    titles = list(dict.fromkeys(result.title for result in results))
    for title in titles:
        rows = [result for result in results if result.title == title]
        unit = rows[0].unit
        better = "higher" if unit.endswith("/s") else "lower"
        print(
            f"\n{title} ({unit}, {better} is better; x floor = median / naive floor's,"
            " x dirrel = median / dir-relative floor's)",
            file=out,
        )
        print(
            f"  {'implementation':22}{'median':>12}  {'spread (min-max)':>24}"
            f"{'x floor':>10}{'x dirrel':>10}",
            file=out,
        )
        for row in rows:
            spread = f"{figure(row.low, unit)}-{figure(row.high, unit)}"
            print(
                f"  {row.implementation:22}{figure(row.median, unit):>12}  {spread:>24}"
                f"{row.ratio_to_floor:>9.2f}x{row.ratio_to_dirrel:>9.2f}x",
                file=out,
            )
        if rows[0].runs:
            write_fairness(out, rows)
    print(
        "\ncold start, fresh interpreter"
        " (ms, wall clock; over bare = median - that interpreter's bare median)",
        file=out,
    )
    print(f"  {'what':28}{'median':>9}  {'spread (min-max)':>18}{'over bare':>11}  code", file=out)
    for start in cold:
        spread = f"{start['low_ms']:.1f}-{start['high_ms']:.1f}"
        print(
            f"  {start['label']:28}{start['median_ms']:>9.1f}  {spread:>18}"
            f"{start['over_bare_ms']:>+11.1f}"
            f"  {start['code']}",
            file=out,
        )
    print(
        "\nCPU count, in this process (ns per call, best of the timings;"
        " x os = per call / os.cpu_count()'s)",
        file=out,
    )
    for row in cpus:
        print(f"  {row['label']:40}{row['ns']:>10,.0f}{row['x_os_cpu_count']:>9.2f}x", file=out)
    if notes:
        print("\nnotes:", file=out)
        for note in notes:
            print(f"- {note}", file=out)


def plot(path: str, results: list[Result], pyplot: Any) -> None:
    """Contended figures against process count, one line per implementation: mutex
    throughput, Jain's index and p99 wait, and arena throughput."""
    contention = [result for result in results if result.operation in CONTENTION]
    implementations = list(dict.fromkeys(result.implementation for result in contention))
    colours = pyplot.get_cmap("tab10").colors
    counts = sorted({result.processes for result in contention})
    figure_, grid = pyplot.subplots(2, 2, figsize=(12, 9))
    panels = [
        (grid[0][0], "contend", "acquisitions per second (all processes)", "median"),
        (grid[0][1], "contend", "Jain's fairness index (1: all had as many)", "jain_index"),
        (grid[1][0], "contend", "p99 time to acquire (us)", "wait_p99_us"),
        (grid[1][1], "contend-arena", "enter + leave pairs per second", "median"),
    ]
    titles = {
        "median": "{} under contention (median, min-max)",
        "jain_index": "{}: how evenly shared (median)",
        "wait_p99_us": "{}: p99 time to acquire (median)",
    }
    for axes, operation, label, figure_name in panels:
        for index, implementation in enumerate(implementations):
            rows = [
                result
                for result in contention
                if result.implementation == implementation and result.operation == operation
            ]
            if not rows:
                continue
            style = {
                "marker": "o",
                "label": implementation,
                "color": colours[index % len(colours)],
                "linestyle": "--" if "floor" in implementation else "-",
            }
            processes = [row.processes for row in rows]
            if figure_name == "median":
                axes.errorbar(
                    processes,
                    [row.median for row in rows],
                    capsize=3,
                    yerr=[
                        [row.median - row.low for row in rows],
                        [row.high - row.median for row in rows],
                    ],
                    **style,
                )
            else:
                axes.plot(processes, [row.fairness[figure_name] for row in rows], **style)
        axes.set_xscale("log", base=2)
        axes.set_xticks(counts, [str(count) for count in counts])
        axes.minorticks_off()
        if figure_name == "jain_index":
            axes.set_ylim(0, 1.05)
        else:
            axes.set_yscale("log")
        axes.set_xlabel("contending processes")
        axes.set_ylabel(label)
        thing = "one arena" if operation == "contend-arena" else "one global_mutex"
        axes.set_title(titles[figure_name].format(thing), fontsize=10)
        axes.grid(True, which="major", alpha=0.3)
    handles, labels = grid[0][0].get_legend_handles_labels()
    figure_.legend(handles, labels, loc="lower center", ncol=5, frameon=False)
    figure_.tight_layout(rect=(0, 0.06, 1, 1))
    figure_.savefig(path, dpi=110)


def process_counts_option(text: str) -> tuple[int, ...]:
    """--processes: positive process counts, comma-separated."""
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"not a list of positive numbers: {text!r}")
    return tuple(sorted(set(counts)))


def default_process_counts(cpus: int) -> tuple[int, ...]:
    return MANY_CPUS_PROCESS_COUNTS if cpus >= MANY_CPUS else PROCESS_COUNTS


def without_nan(value: Any) -> Any:
    """value with NaN (a figure that could not be had) as None: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_nan(item) for item in value]
    return value


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dir", default="/dev/shm", help="directory (and so filesystem) to work in"
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer iterations and repeats (under a minute)"
    )
    parser.add_argument(
        "--processes",
        type=process_counts_option,
        metavar="N,N,...",
        help=(
            "contending process counts (default: 2,8,32,64 with fewer than"
            f" {MANY_CPUS} CPUs available, else 1,2,8,16,64,256)"
        ),
    )
    parser.add_argument(
        "--cpu-only",
        action="store_true",
        help="only the cold starts and cpu_count()'s costs (a couple of minutes)",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="write all results as JSON (- or no FILE: stdout)",
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="plot the contended figures against process count",
    )
    parser.add_argument(
        "--toil-python",
        metavar="PYTHON",
        type=interpreter,
        default=os.environ.get("TOIL_THREADING_TOIL_PYTHON"),
        help=(
            "interpreter with toil.lib.threading"
            " (default: $TOIL_THREADING_TOIL_PYTHON, else this one if it has it)"
        ),
    )
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    toil_threading = load_toil_threading()
    pyplot: Any = None
    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            from matplotlib import pyplot
        except ImportError:
            fail("--plot needs matplotlib: pip install matplotlib (or pip install '.[bench]')")
    if not os.path.isdir(args.dir):
        fail(f"--dir {args.dir} is not a directory")
    plan = PLANS["quick" if args.quick else "full"]
    cpus = toil_threading.cpu_count()
    process_counts = args.processes or default_process_counts(cpus)
    started = time.monotonic()
    env = environment(args.dir, toil_threading)
    env["processes"] = ", ".join(map(str, process_counts)) + (
        " (--processes)" if args.processes else f" (default for {cpus} CPUs available)"
    )
    notes: list[str] = []
    if max(process_counts) > cpus:
        notes.append(
            f"More contending processes than CPUs ({cpus}): fairness and the longest waits are"
            " then mostly the scheduler's time slices, and Jain's index grows with the length"
            " of a run (see bench/README.md)."
        )
    with tempfile.TemporaryDirectory(prefix="toil-threading-bench-") as workdir:
        floor_binary = build_floor(workdir)
        implementations, toil_python = contenders(
            toil_threading, floor_binary, args.toil_python, env, notes
        )
        results = []
        if not args.cpu_only:
            root = tempfile.mkdtemp(prefix="toil-threading-bench-", dir=args.dir)
            try:
                print(
                    f"measuring in {root} ({'quick' if args.quick else 'full'} run):",
                    file=sys.stderr,
                )
                results = run_benchmarks(implementations, plan, root, process_counts)
            finally:
                shutil.rmtree(root)
        print("  cold starts", file=sys.stderr, flush=True)
        interpreters = cold_start_plan(toil_python)
        cold = cold_starts(plan.cold_start_runs, interpreters, workdir)
        print("  cpu_count", file=sys.stderr, flush=True)
        cpu_costs = cpu_count_costs(toil_threading, floor_binary, plan.cold_start_runs)
    env["wall time"] = f"{time.monotonic() - started:.1f} s"
    table_out = sys.stderr if args.json == "-" else sys.stdout
    write_table(table_out, env, results, cold, cpu_costs, notes)
    if args.json:
        document = without_nan(
            {
                "environment": env,
                "plan": asdict(plan),
                "process_counts": list(process_counts),
                "results": [asdict(r) for r in results],
                "cold_start": cold,
                "cpu_count": cpu_costs,
                "notes": notes,
            }
        )
        text = json.dumps(document, indent=1, allow_nan=False)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if pyplot is not None and results:
        plot(args.plot, results, pyplot)


if __name__ == "__main__":
    main()
