"""`inspect --toil`: the lock files of the Toil workflows running on this node, found where
Toil 9.6 puts them; and `--wide`, which shows whole command lines in the table.

The workflows are real Toil runs (through a Python with Toil and this package, as
test_toil_client.py runs them), once on Toil's own module and once with the package
serving Toil (TOIL_THREADING_FOR_TOIL=1); their jobs wait while the command looks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI, core_environment, linux_only, run_cli, skip_or_fail
from test_cli import let_go, start_holder, table_row
from workers import PATIENCE, said, start

from toil_threading._protocol import TABLE_FILE_BYTES

pytestmark = linux_only  # holders are named from /proc/locks

TOIL_WORKFLOW = re.compile(r"toilwf-[0-9a-f]{32}")
DEFERRED_FILE = re.compile(r"deferred/func[a-z0-9_]{8}")

# Toil's variables that move its directories: left unset (empty, which Toil ignores) unless
# a test sets them, so that the places looked in are the test's and the defaults.
UNSET = dict.fromkeys(
    (
        "TOIL_COORDINATION_DIR_OVERRIDE",
        "TOIL_COORDINATION_DIR",
        "TOIL_WORKDIR_OVERRIDE",
        "TOIL_WORKDIR",
        "XDG_RUNTIME_DIR",
        "TMPDIR",
        "TEMP",
        "TMP",
    ),
    "",
)

# One job that says which process runs it and whether this package serves Toil there, then
# waits until the test has looked.
WAITING_WORKFLOW = """
import json, os, time
import toil.lib.threading, toil_threading
from toil.common import Toil
from toil.job import Job

def wait(job, gate):
    with open(os.path.join(gate, "job.tmp"), "w") as out:
        served = toil.lib.threading.safe_lock is toil_threading.safe_lock
        json.dump({"pid": os.getpid(), "served": served}, out)
    os.rename(os.path.join(gate, "job.tmp"), os.path.join(gate, "job"))
    deadline = time.monotonic() + 300
    while not os.path.exists(os.path.join(gate, "done")) and time.monotonic() < deadline:
        time.sleep(0.05)

if __name__ == "__main__":
    parser = Job.Runner.getDefaultArgumentParser()
    parser.add_argument("--gate")
    options = parser.parse_args()
    with Toil(options) as toil:
        toil.start(Job.wrapJobFn(wait, options.gate, cores=0.1, memory="50M", disk="10M"))
"""


class Running:
    """A workflow whose job waits: where its coordination directories go, and its job's PID."""

    def __init__(self, place: Path, source: str, home: Path, leader: subprocess.Popen[bytes]):
        self.place = place
        self.source = source
        self.gate = home / "gate"
        self.log = home / "leader.log"
        self.leader = leader
        self.job_pid = 0


@pytest.fixture(scope="module")
def toil_python_with_package() -> str:
    """A Python with Toil 9.6 and this package both (TOIL_THREADING_TOIL_PYTHON)."""
    python = os.environ.get("TOIL_THREADING_TOIL_PYTHON", "")
    if python:
        probe = subprocess.run(
            [python, "-I", "-c", "import toil, toil_threading"], capture_output=True, cwd="/"
        )
        if probe.returncode == 0:
            return python
    skip_or_fail("needs a Python with Toil and toil_threading both: set TOIL_THREADING_TOIL_PYTHON")
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def workflows(
    toil_python_with_package: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Running]]:
    """Two waiting workflows, started together: "toil" on Toil's own module with its
    coordination directory under TOIL_COORDINATION_DIR; "package" on this package
    (TOIL_THREADING_FOR_TOIL=1) with --workDir and --coordinationDir the same directory,
    as when Toil falls back to the work directory."""
    root = tmp_path_factory.mktemp("toil-inspect")
    script = root / "workflow.py"
    script.write_text(WAITING_WORKFLOW)
    bin_dir = str(Path(toil_python_with_package).parent)  # where _toil_worker is
    base_env = {
        **{k: v for k, v in os.environ.items() if k not in UNSET},
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    base_env.pop("TOIL_THREADING_FOR_TOIL", None)
    runs: dict[str, Running] = {}
    try:
        for flavour in ("toil", "package"):
            home = root / flavour
            gate, work = home / "gate", home / "work"
            for directory in (gate, work):
                directory.mkdir(parents=True)
            env = dict(base_env)
            args = [f"--workDir={work}"]
            if flavour == "toil":
                place, source = home / "coordination", "TOIL_COORDINATION_DIR"
                place.mkdir()
                env["TOIL_COORDINATION_DIR"] = str(place)
            else:
                place, source = work, "WORKDIR"
                args.append(f"--coordinationDir={work}")
                env["TOIL_THREADING_FOR_TOIL"] = "1"
            with open(home / "leader.log", "wb") as log:  # a pipe could fill and stop Toil
                leader = subprocess.Popen(
                    [
                        toil_python_with_package,
                        str(script),
                        f"file:{home / 'jobstore'}",
                        f"--gate={gate}",
                        "--batchSystem=single_machine",
                        "--clean=always",
                        *args,
                    ],
                    cwd=home,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            runs[flavour] = Running(place, source, home, leader)
        deadline = time.monotonic() + PATIENCE
        for flavour, run in runs.items():
            while not (run.gate / "job").exists():
                if run.leader.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the workflow's job never started:\n{run.log.read_text()}")
                time.sleep(0.05)
            job = json.loads((run.gate / "job").read_text())
            assert job["served"] is (flavour == "package"), job
            run.job_pid = job["pid"]
        yield runs
    finally:
        for run in runs.values():
            (run.gate / "done").touch()
        for run in runs.values():
            try:
                run.leader.wait(timeout=PATIENCE)
            except subprocess.TimeoutExpired:
                run.leader.kill()
                run.leader.wait()
        for run in runs.values():
            assert run.leader.returncode == 0, run.log.read_text()[-5000:]


def inspect_toil(core: str, *args: str | Path, env: dict[str, str]) -> tuple[int, Any]:
    """(exit status, parsed report) of `inspect --toil --json`, with Toil's variables env."""
    done = run_cli(core, "inspect", "--toil", "--json", *args, env={**UNSET, **env})
    assert done.stderr == ""
    return done.returncode, json.loads(done.stdout)


def place_in(report: Any, path: Path) -> Any:
    [place] = [place for place in report["places"] if place["path"] == str(path)]
    return place


def nothing_held_in(status: int, report: Any, path: Path) -> bool:
    """Whether the place at path holds nothing, with the exit status the whole report
    gives: other workflows of this node (a test beside this one, a user's run) may hold
    something in Toil's default places, which every run looks in too."""
    return status == int(report["held"]) and not any(
        workflow["held"] for workflow in place_in(report, path)["workflows"]
    )


def command_cell(table: str, kind: str, name: str) -> str:
    """The COMMAND cell of the table row for that kind and name (it has spaces in it)."""
    [line] = [line for line in table.splitlines() if line.split()[:2] == [kind, name]]
    return line.split(None, 4)[4]


def whole_command(pid: int) -> str:
    """The command line of pid as the table shows it whole: arguments joined by spaces."""
    arguments = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    return " ".join(" ".join(os.fsdecode(argument) for argument in arguments).split())


def test_finds_the_running_workflows_and_their_jobs_files(
    core: str, workflows: dict[str, Running]
) -> None:
    toil, package = workflows["toil"], workflows["package"]
    env = {"TOIL_COORDINATION_DIR": str(toil.place)}
    status, report = inspect_toil(core, package.place, env=env)
    assert status == 1 and report["held"] is True
    for flavour, run in workflows.items():
        place = place_in(report, run.place)
        assert (place["source"], place["state"]) == (run.source, None), flavour
        [workflow] = place["workflows"]
        assert TOIL_WORKFLOW.fullmatch(workflow["name"]), workflow["name"]
        directory = run.place / workflow["name"]
        assert workflow["directory"] == str(directory) and directory.is_dir()
        assert workflow["held"] is True and workflow["state"] is None
        # The job's process name, held by the worker that runs the job.
        [name] = [name for name in workflow["names"] if name["pid"] == run.job_pid]
        assert name["state"] == "alive" and Path(name["path"]).parent == directory
        assert any(Path(argument).name == "_toil_worker" for argument in name["command"])
        # The worker's deferred-function file, held by the same process.
        [deferred] = [found for found in workflow["deferred"] if found["pid"] == run.job_pid]
        assert deferred["state"] == "alive", flavour
        assert DEFERRED_FILE.fullmatch(deferred["name"]), deferred["name"]
        assert deferred["path"] == str(run.place / workflow["name"] / deferred["name"])
        assert Path(deferred["path"]).is_file()
        assert workflow["deferred_state"] is None

    table = run_cli(core, "inspect", "--toil", package.place, env={**UNSET, **env})
    assert (table.returncode, table.stderr) == (1, "")
    wide = run_cli(core, "inspect", "--toil", "--wide", package.place, env={**UNSET, **env})
    assert (wide.returncode, wide.stderr) == (1, "")
    for run in workflows.values():
        assert f"{run.place} ({run.source}): 1 Toil workflow" in table.stdout.splitlines()
        [workflow] = place_in(report, run.place)["workflows"]
        assert f"  {workflow['name']}:" in table.stdout.splitlines()
        whole = whole_command(run.job_pid)
        assert len(whole) > 60
        [deferred] = [found for found in workflow["deferred"] if found["pid"] == run.job_pid]
        # The command is cut in the table, whole with --wide.
        for shown, command in ((table, whole[:57] + "..."), (wide, whole)):
            row = table_row(shown.stdout, "deferred", deferred["name"])
            assert row[2:4] == ["alive", str(run.job_pid)]
            assert command_cell(shown.stdout, "deferred", deferred["name"]) == command


# Holds an flock on each file named before "--" (those after are carried along) until
# its stdin closes.
HOLDER = """
import fcntl, sys
held = [open(path) for path in sys.argv[1 : sys.argv.index("--")]]
for file in held:
    fcntl.flock(file, fcntl.LOCK_EX)
print(flush=True)
sys.stdin.read()
"""


def start_flock_holder(*paths: Path, carried: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    """A child holding an exclusive flock on each of paths (release: communicate(""))."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, *map(str, paths), "--", *carried],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    assert holder.stdout is not None and holder.stdout.readline() == "\n"
    return holder


def test_a_huge_command_line_is_read_only_so_far(core: str, shm_dir: Path) -> None:
    (shm_dir / "toil-mutex-jobs").touch()
    # 1.5 MiB of arguments (each at most what the kernel takes: 128 KiB).
    arguments = tuple(chr(ord("a") + index) * 100_000 for index in range(16))
    holder = start_flock_holder(shm_dir / "toil-mutex-jobs", carried=arguments)
    try:
        done = run_cli(core, "inspect", "--json", shm_dir)
        assert (done.returncode, done.stderr) == (1, "")
        [mutex] = json.loads(done.stdout)["mutexes"]
        assert mutex["pid"] == holder.pid
        command = mutex["command"]
        assert command[:5] == [sys.executable, "-c", HOLDER, str(shm_dir / "toil-mutex-jobs"), "--"]
        assert len("\0".join(command)) == TABLE_FILE_BYTES
        assert command[5:-1] == list(arguments[: len(command) - 6])
        assert arguments[len(command) - 6].startswith(command[-1])
    finally:
        holder.communicate("")


def test_wide_shows_a_long_command_line_whole(core: str, shm_dir: Path) -> None:
    holder, _, name = start_holder(core, shm_dir, "jobs")
    try:
        whole = whole_command(holder.pid)
        assert len(whole) > 60
        for flags in ((), ("--wide",)):
            table = run_cli(core, "inspect", *flags, shm_dir)
            assert (table.returncode, table.stderr) == (1, "")
            assert command_cell(table.stdout, "name", name) == (
                whole if flags else whole[:57] + "..."
            )
    finally:
        let_go(holder)


# A cleanup arena as a batch system's workers hold it (toil/batchSystems/cleanup_support.py),
# in the coordination directory itself.
ARENA_MEMBER = r"""
import sys, toil_threading
arena = toil_threading.LastProcessStandingArena(sys.argv[1], sys.argv[2])
arena.enter()
print(arena.lockfileName, flush=True)
sys.stdin.readline()
for _ in arena.leave():
    pass
"""


def test_a_cleanup_arena_with_a_live_member(core: str, tmp_path: Path) -> None:
    place = tmp_path / "coordination"
    place.mkdir()
    workflow = f"toilwf-{uuid.uuid4().hex}"
    member = start(ARENA_MEMBER, place, f"{workflow}-cleanup", core=core)
    try:
        member_file = said(member)
        status, report = inspect_toil(core, env={"TOIL_COORDINATION_DIR": str(place)})
        assert status == 1
        [found] = place_in(report, place)["workflows"]
        assert (found["name"], found["held"], found["state"]) == (workflow, True, None)
        assert (found["mutexes"], found["names"], found["deferred"]) == ([], [], [])
        [arena] = found["cleanup"]["arenas"]
        assert (arena["name"], arena["alive"]) == (f"{workflow}-cleanup", 1)
        [alive] = arena["members"]
        members = place / f"{workflow}-cleanup-arena-members"
        assert (alive["name"], alive["pid"]) == (member_file, member.pid)
        assert alive["path"] == str(members / member_file)

        table = run_cli(
            core, "inspect", "--toil", env={**UNSET, "TOIL_COORDINATION_DIR": str(place)}
        )
        assert table.returncode == 1
        row = table_row(table.stdout, "member", f"{workflow}-cleanup/{member_file}")
        assert row[2:4] == ["alive", str(member.pid)]
    finally:
        let_go(member)
    status, report = inspect_toil(core, env={"TOIL_COORDINATION_DIR": str(place)})
    assert nothing_held_in(status, report, place)
    assert place_in(report, place)["workflows"] == []  # it cleaned up


def plant_held_files(target: Path) -> subprocess.Popen[str]:
    """Files in target that inspect would show held if it went there: a mutex, a process
    name and a deferred-function file, each held by a sleeping child (returned)."""
    (target / "deferred").mkdir()
    paths = [target / "toil-mutex-bait", target / "tmpbaitbait", target / "deferred/funcbaitbait"]
    for path in paths:
        path.touch()
    return start_flock_holder(*paths)


def test_planted_links_and_fifos_are_never_followed_or_waited_on(core: str, tmp_path: Path) -> None:
    place, elsewhere = tmp_path / "coordination", tmp_path / "elsewhere"
    place.mkdir()
    elsewhere.mkdir()
    baited = plant_held_files(elsewhere)
    try:
        linked, fifo, real = (f"toilwf-{uuid.uuid4().hex}" for _ in range(3))
        (place / linked).symlink_to(elsewhere)  # a workflow's name, linked elsewhere
        os.mkfifo(place / fifo)  # a workflow's name, a FIFO
        # A real workflow directory whose every entry is planted: its deferred directory a
        # link; its names, mutexes and its cleanup arena FIFOs or links.
        workflow = place / real
        workflow.mkdir()
        (workflow / "deferred").symlink_to(elsewhere / "deferred")
        os.mkfifo(workflow / "tmpfifofifo")
        os.mkfifo(workflow / "toil-mutex-fifo")
        (workflow / "tmplinklink").symlink_to(elsewhere / "tmpbaitbait")
        (workflow / "toil-mutex-link").symlink_to(elsewhere / "toil-mutex-bait")
        (place / f"{real}-cleanup-arena-members").symlink_to(elsewhere)
        os.mkfifo(place / f"toil-mutex-{real}-cleanup-arena-lock")
        before = sorted(os.listdir(place)), sorted(os.listdir(workflow))
        # A place that is a FIFO: told, never opened for reading.
        os.mkfifo(tmp_path / "fifo")
        env = {"TOIL_COORDINATION_DIR": str(place), "TOIL_WORKDIR": str(tmp_path / "fifo")}

        status, report = inspect_toil(core, env=env)
        assert nothing_held_in(status, report, place)
        assert place_in(report, tmp_path / "fifo")["state"] == "Not a directory"
        [found] = place_in(report, place)["workflows"]  # the link and the FIFO are no workflows
        assert (found["name"], found["state"]) == (real, None)
        assert (found["mutexes"], found["names"], found["deferred"]) == ([], [], [])
        assert found["deferred_state"] == "a symbolic link is there, and locks never follow one"
        assert found["cleanup"]["mutexes"] == []
        [arena] = found["cleanup"]["arenas"]
        assert arena["state"] == "a symbolic link is there, and locks never follow one"
        assert arena["members"] == []

        table = run_cli(core, "inspect", "--toil", env={**UNSET, **env})
        assert table.returncode in (0, 1) and table.stderr == ""  # 1: held elsewhere
        assert "bait" not in table.stdout
        assert f"{tmp_path}/fifo (TOIL_WORKDIR): Not a directory" in table.stdout.splitlines()
        assert table_row(table.stdout, "deferred", "deferred")[2:] == [
            "a",
            "symbolic",
            "link",
            "is",
            "there,",
            "and",
            "locks",
            "never",
            "follow",
            "one",
        ]
        assert (sorted(os.listdir(place)), sorted(os.listdir(workflow))) == before
    finally:
        baited.communicate("")


def test_a_dead_workers_deferred_file_is_shown_dead_and_kept(core: str, tmp_path: Path) -> None:
    place = tmp_path / "coordination"
    deferred = place / f"toilwf-{uuid.uuid4().hex}" / "deferred"
    deferred.mkdir(parents=True)
    (deferred / "funcdead_123").write_bytes(b"functions still to run")
    (deferred / "funcwip_4567.tmp").touch()
    (deferred / "notours").touch()  # not named as Toil names them: not looked at
    for _ in range(2):
        status, report = inspect_toil(core, env={"TOIL_COORDINATION_DIR": str(place)})
        assert nothing_held_in(status, report, place)
        [found] = place_in(report, place)["workflows"]
        states = {entry["name"]: (entry["state"], entry["pid"]) for entry in found["deferred"]}
        assert states == {
            "deferred/funcdead_123": ("dead", None),
            "deferred/funcwip_4567.tmp": ("dead", None),
        }
    assert sorted(os.listdir(deferred)) == ["funcdead_123", "funcwip_4567.tmp", "notours"]


def test_unreadable_places_and_workflows_are_reported_not_fatal(core: str, tmp_path: Path) -> None:
    wrapper: tuple[str, ...] = ()
    if os.geteuid() == 0:
        # Root reads any directory: run the command without the capabilities that let it.
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            skip_or_fail("running as root and setpriv(1) is missing: cannot deny a read")
        wrapper = (str(setpriv), "--bounding-set=-dac_override,-dac_read_search")
    readable, closed = tmp_path / "readable", tmp_path / "closed"
    closed_workflow = readable / f"toilwf-{uuid.uuid4().hex}"
    open_workflow = readable / f"toilwf-{uuid.uuid4().hex}"
    for directory in (closed, closed_workflow, open_workflow / "deferred"):
        directory.mkdir(parents=True)
    (open_workflow / "deferred" / "funcabcd1234").touch()
    os.chmod(open_workflow / "deferred", 0)
    for directory in (closed, closed_workflow):
        directory.chmod(0)
    try:
        done = subprocess.run(
            [*wrapper, *CLI, "inspect", "--toil", "--json"],
            cwd="/",
            env=core_environment(
                core, {**UNSET, "TOIL_COORDINATION_DIR": str(readable), "TOIL_WORKDIR": str(closed)}
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.stderr == ""
        report = json.loads(done.stdout)
        assert nothing_held_in(done.returncode, report, readable)
        denied = "unknown: permission denied"
        assert (place_in(report, closed)["state"], place_in(report, closed)["workflows"]) == (
            denied,
            [],
        )
        workflows = {found["name"]: found for found in place_in(report, readable)["workflows"]}
        assert workflows[closed_workflow.name]["state"] == denied
        assert workflows[open_workflow.name]["state"] is None
        assert workflows[open_workflow.name]["deferred_state"] == denied
    finally:
        for directory in (closed, closed_workflow, open_workflow / "deferred"):
            directory.chmod(0o755)


def test_places_in_toils_order_each_once(
    core: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SLURM_JOBID", raising=False)
    # Each place a variable (or the argument) names, in the order Toil tries them.
    ours = [
        (tmp_path / "override", "TOIL_COORDINATION_DIR_OVERRIDE"),
        (tmp_path / "coordination", "TOIL_COORDINATION_DIR"),
        (tmp_path / "runtime" / "toil", "XDG_RUNTIME_DIR"),
        (tmp_path / "tmpdir", "TMPDIR"),
        (tmp_path / "workdir-override", "TOIL_WORKDIR_OVERRIDE"),
        (tmp_path / "workdir", "WORKDIR"),
        (tmp_path / "toil-workdir", "TOIL_WORKDIR"),
    ]
    env = {source: str(path) for path, source in ours if source != "WORKDIR"}
    for path, _ in ours:
        path.mkdir(parents=True)
    env["XDG_RUNTIME_DIR"] = str(tmp_path / "runtime")
    env["TEMP"] = str(tmp_path / "tmpdir")  # met before, under TMPDIR: looked in once
    env["TMP"] = str(tmp_path / "missing")  # no such directory: left out
    # Toil's fixed places, where this machine has them (once each), after TMPDIR's.
    fixed, seen = [], set()
    for path in ("/run/lock", "/tmp", "/var/tmp", "/usr/tmp"):
        if os.path.isdir(path) and (os.stat(path).st_dev, os.stat(path).st_ino) not in seen:
            seen.add((os.stat(path).st_dev, os.stat(path).st_ino))
            fixed.append(path)

    def places(env: dict[str, str]) -> list[tuple[str, str]]:
        status, report = inspect_toil(core, tmp_path / "workdir", env=env)
        assert status in (0, 1)  # other workflows of this node may hold something
        found = [(place["path"], place["source"]) for place in report["places"]]
        assert [path for path, source in found if source == "default"] == fixed
        return [(Path(path), source) for path, source in found if source != "default"]

    assert places(env) == ours
    # Under Slurm, Toil does not trust XDG_RUNTIME_DIR.
    assert places({**env, "SLURM_JOBID": "42"}) == ours[:2] + ours[3:]


def test_usage_errors(core: str, tmp_path: Path) -> None:
    (tmp_path / "tmpdeadname").touch()  # what --clean would remove
    done = run_cli(core, "inspect", "--toil", "--clean", tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.endswith(
        "toil-threading inspect: error: --clean does not go with --toil: Toil removes its own"
        " dead files\n"
    )
    assert os.listdir(tmp_path) == ["tmpdeadname"]
    done = run_cli(core, "inspect", "--json")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.endswith(
        "toil-threading inspect: error: the following arguments are required: DIR\n"
    )
    helped = run_cli(core, "inspect", "--help")
    assert helped.returncode == 0
    assert "--toil" in helped.stdout and "--wide" in helped.stdout


def test_a_place_and_what_is_in_it_are_shown_escaped(core: str, tmp_path: Path) -> None:
    place = tmp_path / "coordination\x1b[2J\u202e"
    held = place / f"toilwf-{uuid.uuid4().hex}"
    held.mkdir(parents=True)
    holder, _, name = start_holder(core, held, "jobs")
    try:
        table = run_cli(
            core, "inspect", "--toil", env={**UNSET, "TOIL_COORDINATION_DIR": str(place)}
        )
        assert (table.returncode, table.stderr) == (1, "")
        shown = f"{tmp_path}/coordination\\x1b[2J\\u202e (TOIL_COORDINATION_DIR): 1 Toil workflow"
        assert shown in table.stdout.splitlines()
        assert "\x1b" not in table.stdout and "\u202e" not in table.stdout
        assert table_row(table.stdout, "name", name)[2:4] == ["alive", str(holder.pid)]
        status, report = inspect_toil(core, env={"TOIL_COORDINATION_DIR": str(place)})
        assert status == 1
        assert place_in(report, place)["workflows"][0]["directory"] == str(held)
    finally:
        let_go(holder)
