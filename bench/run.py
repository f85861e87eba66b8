"""Benchmark toil_threading against the system-call floor, Toil's own module and filelock.

    python bench/run.py [--quick] [--dir /dev/shm] [--json [FILE]] [--plot FILE.png]
                        [--toil-python PYTHON]

See bench/README.md.  Run it with the interpreter of an installed toil_threading that
has its compiled core; it refuses to run otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))  # for workloads.py: python -I leaves this folder off sys.path

from workloads import Task, measure  # noqa: E402

FLOOR = "naive floor"
PROCESS_COUNTS = (2, 8, 32, 64)
# How long one floor or Toil subprocess may take before the run is called stuck.
SUBPROCESS_TIMEOUT = 600


@dataclass(frozen=True)
class Plan:
    """Sizes of a run: per operation (count, repeats), contention and cold starts."""

    sizes: dict[str, tuple[int, int]]
    contention_seconds: float
    contention_repeats: int
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
    "contend": ("contended global_mutex, {} processes", "acquisitions/s", None),
}


@dataclass
class Implementation:
    """Something measured: a name, how it measures a task in a directory, what it can do."""

    name: str
    measure: Callable[[Task, str], list[float]]
    operations: frozenset[str] = frozenset(OPERATIONS)


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
    processes: int = 0  # contending processes, for "contend"
    ratio_to_floor: float = float("nan")


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
        [compiler, "-O2", "-o", binary, str(BENCH / "floor.c")],
        check=False,
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        fail(f"cc -O2 bench/floor.c failed:\n{built.stderr}")
    return binary


def run_json(command: list[str]) -> Any:
    done = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT
    )
    if done.returncode != 0:
        fail(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def floor(binary: str, variant: str, name: str) -> Implementation:
    def measure_task(task: Task, directory: str) -> list[float]:
        sizes = (
            [task.count, round(task.seconds * 1000)]
            if task.operation == "contend"
            else [task.count]
        )
        command = [binary, variant, directory, task.operation, *map(str, sizes), str(task.repeats)]
        return [float(sample) for sample in run_json(command)["samples"]]

    return Implementation(name, measure_task)


def core(toil_threading: Any, module: str, name: str) -> Implementation:
    """toil_threading in this process, switched to the given core for the task."""

    def measure_task(task: Task, directory: str) -> list[float]:
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

        def measure_in_subprocess(task: Task, directory: str) -> list[float]:
            script = [python, str(BENCH / "workloads.py"), "--api", "toil", "--dir", directory]
            return [
                float(sample) for sample in run_json([*script, "--task", json.dumps(asdict(task))])
            ]

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
        "filelock",
        lambda task, directory: measure(mutexes, task, directory),
        frozenset({"mutex", "contend"}),
    )


def contenders(
    toil_threading: Any,
    floor_binary: str,
    toil_python: str | None,
    env: dict[str, str],
    notes: list[str],
) -> tuple[list[Implementation], str | None]:
    """Everything to measure, the naive floor first; also the interpreter that has Toil.

    Says in env and notes what is compared and what is left out.
    """
    implementations = [
        floor(floor_binary, "naive", FLOOR),
        floor(floor_binary, "dirrel", "dir-relative floor"),
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
    return implementations, toil_python


def tasks(plan: Plan) -> list[Task]:
    listed = [Task(operation, count, repeats) for operation, (count, repeats) in plan.sizes.items()]
    return listed + [
        Task("contend", processes, plan.contention_repeats, plan.contention_seconds)
        for processes in PROCESS_COUNTS
    ]


def summarise(task: Task, implementation: str, raw: list[float]) -> Result:
    title, unit, scale = OPERATIONS[task.operation]
    samples = [sample / scale for sample in raw] if scale else raw
    return Result(
        operation=task.operation,
        title=title.format(task.count),
        unit=unit,
        implementation=implementation,
        samples=samples,
        median=statistics.median(samples),
        low=min(samples),
        high=max(samples),
        processes=task.count if task.operation == "contend" else 0,
    )


def run_benchmarks(implementations: list[Implementation], plan: Plan, root: str) -> list[Result]:
    results = []
    for task in tasks(plan):
        rows = []
        for implementation in implementations:
            if task.operation not in implementation.operations:
                continue
            print(
                f"  {task.operation} {task.count}: {implementation.name}",
                file=sys.stderr,
                flush=True,
            )
            directory = tempfile.mkdtemp(dir=root)
            try:
                raw = implementation.measure(task, directory)
            finally:
                shutil.rmtree(directory)
            rows.append(summarise(task, implementation.name, raw))
        floor_median = next(row.median for row in rows if row.implementation == FLOOR)
        for row in rows:
            row.ratio_to_floor = row.median / floor_median
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


def figure(value: float, unit: str) -> str:
    return f"{value:,.0f}" if unit == "acquisitions/s" else f"{value:.2f}"


def write_table(
    out: TextIO,
    env: dict[str, str],
    results: list[Result],
    cold: list[dict[str, Any]],
    notes: list[str],
) -> None:
    for key, value in env.items():
        print(f"{key + ':':16}{value}", file=out)
    titles = list(dict.fromkeys(result.title for result in results))
    for title in titles:
        rows = [result for result in results if result.title == title]
        unit = rows[0].unit
        better = "higher" if unit == "acquisitions/s" else "lower"
        print(f"\n{title} ({unit}, {better} is better; x floor = median / naive floor's)", file=out)
        print(
            f"  {'implementation':22}{'median':>12}  {'spread (min-max)':>24}{'x floor':>10}",
            file=out,
        )
        for row in rows:
            spread = f"{figure(row.low, unit)}-{figure(row.high, unit)}"
            print(
                f"  {row.implementation:22}{figure(row.median, unit):>12}  {spread:>24}"
                f"{row.ratio_to_floor:>9.2f}x",
                file=out,
            )
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
    if notes:
        print("\nnotes:", file=out)
        for note in notes:
            print(f"- {note}", file=out)


def plot(path: str, results: list[Result], pyplot: Any) -> None:
    figure_, axes = pyplot.subplots(figsize=(7, 4.5))
    contention = [result for result in results if result.operation == "contend"]
    for implementation in dict.fromkeys(result.implementation for result in contention):
        rows = [result for result in contention if result.implementation == implementation]
        axes.errorbar(
            [r.processes for r in rows],
            [r.median for r in rows],
            marker="o",
            label=implementation,
            capsize=3,
            yerr=[[r.median - r.low for r in rows], [r.high - r.median for r in rows]],
        )
    axes.set_xscale("log", base=2)
    axes.set_xticks(PROCESS_COUNTS, [str(count) for count in PROCESS_COUNTS])
    axes.set_yscale("log")
    axes.set_xlabel("contending processes")
    axes.set_ylabel("acquisitions per second (all processes)")
    axes.set_title("One global_mutex under contention (median, min-max)")
    axes.legend()
    figure_.tight_layout()
    figure_.savefig(path, dpi=120)


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
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="write all results as JSON (- or no FILE: stdout)",
    )
    parser.add_argument(
        "--plot", metavar="FILE.png", help="plot contended throughput against process count"
    )
    parser.add_argument(
        "--toil-python",
        metavar="PYTHON",
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
    started = time.monotonic()
    env = environment(args.dir, toil_threading)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="toil-threading-bench-") as workdir:
        implementations, toil_python = contenders(
            toil_threading, build_floor(workdir), args.toil_python, env, notes
        )
        root = tempfile.mkdtemp(prefix="toil-threading-bench-", dir=args.dir)
        try:
            print(
                f"measuring in {root} ({'quick' if args.quick else 'full'} run):", file=sys.stderr
            )
            results = run_benchmarks(implementations, plan, root)
        finally:
            shutil.rmtree(root)
        print("  cold starts", file=sys.stderr, flush=True)
        interpreters = cold_start_plan(toil_python)
        cold = cold_starts(plan.cold_start_runs, interpreters, workdir)
    env["wall time"] = f"{time.monotonic() - started:.1f} s"
    table_out = sys.stderr if args.json == "-" else sys.stdout
    write_table(table_out, env, results, cold, notes)
    if args.json:
        document = {
            "environment": env,
            "plan": asdict(plan),
            "results": [asdict(r) for r in results],
            "cold_start": cold,
            "notes": notes,
        }
        if args.json == "-":
            json.dump(document, sys.stdout, indent=1)
            print()
        else:
            Path(args.json).write_text(json.dumps(document, indent=1) + "\n")
    if pyplot is not None:
        plot(args.plot, results, pyplot)


if __name__ == "__main__":
    main()
