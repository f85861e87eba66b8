"""Toil as the client: install_into_toil(), TOIL_THREADING_FOR_TOIL=1 in every process of
a real Toil run, Toil's logging, and Toil's cpu_count in a cgroup.

These need an interpreter with both Toil and this package (TOIL_THREADING_TOIL_PYTHON,
as .ci/run sets up); Toil's own test suite is run against the switch by .ci/run itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import core_environment, linux_only, skip_or_fail

import toil_threading

pytestmark = linux_only


@pytest.fixture(scope="module")
def toil_and_package() -> str:
    """A Python that has Toil and this package both."""
    python = os.environ.get("TOIL_THREADING_TOIL_PYTHON", "")
    for candidate in filter(None, (python, sys.executable)):
        probe = subprocess.run(
            [candidate, "-I", "-c", "import toil, toil_threading"], capture_output=True, cwd="/"
        )
        if probe.returncode == 0:
            return candidate
    skip_or_fail("needs a Python with Toil and toil_threading both: set TOIL_THREADING_TOIL_PYTHON")
    raise AssertionError("unreachable")


def run(
    python: str, code: str, *, switch: bool = False, timeout: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TOIL_THREADING_FOR_TOIL", "TOIL_THREADING_NO_EXTENSIONS")
    }
    if switch:
        environment["TOIL_THREADING_FOR_TOIL"] = "1"
    environment.update(env)
    done = subprocess.run(
        [python, "-I", "-c", textwrap.dedent(code)],
        cwd="/",
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return done


CHECK = """
    import json, sys, toil_threading
    import toil.lib.threading as t
    names = ["global_mutex", "safe_lock", "get_process_name", "process_name_exists",
             "LastProcessStandingArena", "cpu_count", "ExceptionalThread",
             "ensure_filesystem_lockable", "locked_file_is", "safe_unlock_and_close"]
    print(json.dumps({
        "ours": [name for name in names if getattr(t, name) is getattr(toil_threading, name)],
        "logger": t.logger.name,
        "time": t.time.__name__,
    }))
"""


def test_install_into_toil_before_toil_is_imported(toil_and_package: str) -> None:
    done = run(
        toil_and_package,
        "import toil_threading\ntoil_threading.install_into_toil()\n" + textwrap.dedent(CHECK),
    )
    found = json.loads(done.stdout)
    assert len(found["ours"]) == 10, found
    assert (found["logger"], found["time"]) == ("toil.lib.threading", "time")


def test_install_into_toil_after_toil_is_imported(toil_and_package: str) -> None:
    done = run(
        toil_and_package,
        """
        import toil.batchSystems.singleMachine as single, toil.fileStores.cachingFileStore as cache
        import toil.lib.threading as t, toil_threading
        before = cache.get_process_name
        toil_threading.install_into_toil()
        toil_threading.install_into_toil()  # again: nothing more happens
        print(before is not toil_threading.get_process_name,
              cache.get_process_name is toil_threading.get_process_name,
              single.cpu_count is toil_threading.cpu_count,
              t.global_mutex is toil_threading.global_mutex)
        """,
    )
    assert done.stdout.split() == ["True"] * 4


def test_install_into_toil_without_toil() -> None:
    done = subprocess.run([sys.executable, "-I", "-c", "import toil"], capture_output=True, cwd="/")
    if done.returncode == 0:
        pytest.skip("Toil is installed beside this Python")
    import toil_threading

    with pytest.raises(ModuleNotFoundError, match="Toil is not installed"):
        toil_threading.install_into_toil()


def test_the_variable_switches_a_process_only_if_it_imports_toil(toil_and_package: str) -> None:
    untouched = run(
        toil_and_package, "import sys\nprint('toil_threading' in sys.modules)", switch=True
    )
    assert untouched.stdout.strip() == "False", "the switch imported the package without Toil"
    switched = run(toil_and_package, CHECK, switch=True)
    assert len(json.loads(switched.stdout)["ours"]) == 10
    plain = run(toil_and_package, CHECK)
    assert json.loads(plain.stdout)["ours"] == [], "Toil ran on the package without the switch"


WORKFLOW = """
import json, os, sys
from toil.common import Toil
from toil.job import Job

def child(job, evidence, index, shared):
    import toil.lib.threading as t
    import toil_threading
    from toil.fileStores import cachingFileStore
    with open(job.fileStore.readGlobalFile(shared)) as handle:
        assert handle.read() == "shared"
    with t.global_mutex(evidence, "evidence"):
        pass
    with open(os.path.join(evidence, f"{index}-{os.getpid()}.json"), "w") as out:
        json.dump({
            "argv0": os.path.basename(sys.argv[0]),
            "global_mutex": t.global_mutex is toil_threading.global_mutex,
            "get_process_name": (
                cachingFileStore.get_process_name is toil_threading.get_process_name
            ),
            "file_store": type(job.fileStore).__name__,
        }, out)

def root(job, evidence, children):
    path = job.fileStore.getLocalTempFile()
    with open(path, "w") as handle:
        handle.write("shared")
    shared = job.fileStore.writeGlobalFile(path)
    for index in range(children):
        job.addChildJobFn(child, evidence, index, shared, cores=0.1, memory="50M", disk="10M")

if __name__ == "__main__":
    parser = Job.Runner.getDefaultArgumentParser()
    parser.add_argument("--evidence")
    parser.add_argument("--children", type=int)
    options = parser.parse_args()
    with Toil(options) as toil:
        root_job = Job.wrapJobFn(root, options.evidence, options.children, memory="50M", disk="10M")
        toil.start(root_job)
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def run_workflow(
    python: str, workdir: Path, log_level: str, children: int, environment: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, object]]]:
    """Run WORKFLOW with python at log_level, its leader logging to workdir/leader.log as
    well, in environment: the leader's run, and what each child found."""
    script = workdir / "workflow.py"
    script.write_text(WORKFLOW)
    evidence = workdir / "evidence"
    evidence.mkdir()
    bin_dir = str(Path(python).parent)  # where _toil_worker is
    done = subprocess.run(
        [
            python,
            str(script),
            f"file:{workdir / 'jobstore'}",
            f"--evidence={evidence}",
            f"--children={children}",
            "--batchSystem=single_machine",
            "--caching=true",
            f"--logLevel={log_level}",
            f"--logFile={workdir / 'leader.log'}",
            "--clean=always",
            f"--workDir={workdir}",
        ],
        cwd=workdir,
        env={**environment, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    reports = [json.loads(path.read_text()) for path in evidence.glob("*.json")]
    assert len(reports) == children, sorted(os.listdir(evidence))
    return done, reports


def test_a_real_workflow_runs_every_process_on_the_package(
    toil_and_package: str, workdir: Path
) -> None:
    environment = {**os.environ, "TOIL_THREADING_FOR_TOIL": "1"}
    done, reports = run_workflow(toil_and_package, workdir, "DEBUG", 5, environment)
    assert {report["argv0"] for report in reports} == {"_toil_worker"}
    # The names Toil's module and its file store hold are the package's own objects.
    assert {report["global_mutex"] for report in reports} == {True}
    assert {report["get_process_name"] for report in reports} == {True}
    assert {report["file_store"] for report in reports} == {"CachingFileStore"}
    # Toil shows the package's records (it silences loggers outside `toil`): the leader's
    # start-up check of its coordination directory, logged by the package.
    ours = [
        line
        for line in done.stderr.splitlines()
        if "[toil.lib.threading]" in line and " is on " in line and "flock" in line
    ]
    assert ours, done.stderr[-5000:]


# Where the switch takes over, one line at INFO says so in Toil's own log, once.

CORE_WORDS = {"compiled": "compiled", "pure": "pure-Python"}


def served(core: str) -> str:
    """The line's message on core."""
    version = toil_threading.__version__
    return f"toil.lib.threading: served by toil-threading {version} ({CORE_WORDS[core]} core)"


def lines_saying_served(log: str) -> list[str]:
    return [line for line in log.splitlines() if "served by toil-threading" in line]


def test_a_workflow_at_info_says_once_in_the_leaders_log_that_the_package_serves_toil(
    core: str, toil_and_package: str, workdir: Path
) -> None:
    environment = core_environment(core, {"TOIL_THREADING_FOR_TOIL": "1"})
    done, reports = run_workflow(toil_and_package, workdir, "INFO", 2, environment)
    assert {report["global_mutex"] for report in reports} == {True}
    # Toil's format on stderr, its log file's (the message alone) in --logFile.
    [line] = lines_saying_served(done.stderr)
    assert line.endswith(f" [I] [toil.lib.threading] {served(core)}"), line
    assert lines_saying_served((workdir / "leader.log").read_text()) == [served(core)]


def test_a_workflow_without_the_switch_says_nothing_of_the_package(
    toil_and_package: str, workdir: Path
) -> None:
    environment = {k: v for k, v in os.environ.items() if k != "TOIL_THREADING_FOR_TOIL"}
    done, reports = run_workflow(toil_and_package, workdir, "INFO", 1, environment)
    assert {report["global_mutex"] for report in reports} == {False}
    assert "[I] [toil.common]" in done.stderr  # Toil's log at INFO, without the line
    assert lines_saying_served(done.stderr) == []
    assert lines_saying_served((workdir / "leader.log").read_text()) == []


# Toil's way: logging set up after Toil's module is imported.  The line waits for it.
AS_TOIL_DOES = """
import importlib, logging
import toil.lib.threading as t
logging.getLogger("toil.leader").warning("before the log is set up")
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
logging.getLogger("toil.leader").info("first")
importlib.reload(t)
import toil_threading
toil_threading.install_into_toil()
logging.getLogger("toil.leader").info("second")
"""
# Logging set up first: the line comes as the module is imported.
SET_UP_FIRST = """
import logging
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
import toil.lib.threading
logging.getLogger("toil.leader").info("first")
"""
# Toil's log at WARNING: INFO is never shown, and the line never said.
AT_WARNING = """
import logging
import toil.lib.threading
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
logging.getLogger("toil.leader").info("first")
logging.getLogger("toil.leader").warning("second")
"""
# install_into_toil() without the switch takes over as well.
BY_HAND = """
import logging, toil_threading
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
toil_threading.install_into_toil()
import toil.lib.threading
logging.getLogger("toil.leader").info("first")
"""


@pytest.mark.parametrize(
    "code,switch,said",
    [
        (
            AS_TOIL_DOES,
            True,
            [
                "before the log is set up",
                "SERVED",
                "INFO toil.leader first",
                "INFO toil.leader second",
            ],
        ),
        (SET_UP_FIRST, True, ["SERVED", "INFO toil.leader first"]),
        (AT_WARNING, True, ["WARNING toil.leader second"]),
        (BY_HAND, False, ["SERVED", "INFO toil.leader first"]),
    ],
    ids=["as Toil does", "set up first", "at WARNING", "by hand"],
)
def test_the_served_line_is_said_once_when_toils_log_shows_info(
    core: str, toil_and_package: str, code: str, switch: bool, said: list[str]
) -> None:
    pure = {"TOIL_THREADING_NO_EXTENSIONS": "1"} if core == "pure" else {}
    done = run(toil_and_package, code, switch=switch, **pure)
    line = f"INFO toil.lib.threading {served(core)}"
    assert done.stderr.splitlines() == [line if text == "SERVED" else text for text in said]


CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")


def test_cpu_count_through_toil_in_a_half_cpu_cgroup(toil_and_package: str) -> None:
    if not (CGROUP_V1_CPU / "cpu.cfs_quota_us").exists():
        skip_or_fail("no cgroup v1 cpu controller mounted at /sys/fs/cgroup/cpu")
    group = CGROUP_V1_CPU / f"toil-threading-toil-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
    except OSError as error:
        skip_or_fail(f"cannot make a cgroup (needs root): {error}")
    try:
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text("50000")
        code = "import toil.lib.threading as t; print(t.cpu_count())"
        # The shell moves itself into the cgroup, then becomes the interpreter.
        script = f'echo $$ > "{group}/cgroup.procs" && exec "$0" -I -c "$1"'

        def count(switch: bool) -> int:
            environment = {k: v for k, v in os.environ.items() if k != "TOIL_THREADING_FOR_TOIL"}
            if switch:
                environment["TOIL_THREADING_FOR_TOIL"] = "1"
            done = subprocess.run(
                ["sh", "-c", script, toil_and_package, code],
                env=environment,
                capture_output=True,
                text=True,
                check=True,
                cwd="/",
            )
            return int(done.stdout)

        toils_own, ours = count(False), count(True)
    finally:
        group.rmdir()
    assert ours == 1
    assert toils_own == min(len(os.sched_getaffinity(0)), os.cpu_count() or 1)
