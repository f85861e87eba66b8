"""`toil-threading doctor`, run as operators run it: a fresh interpreter, on each core.

Each exit status is reached for real: 0 with nothing asked for or all of it in force; 1
for the switch asked for and unrecognised or not installed, the pure core where the
compiled one was expected (a copy of the package whose compiled core is missing or
broken), a retry setting not in force, a directory the package refuses; 2 for bad
arguments and directories it cannot list.  Toil itself is not needed here (see
test_toil_client.py for doctor beside Toil, test_startup.py for an editable install).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import UNLISTABLE, core_environment, linux_only, run_cli, unlistable

import toil_threading
from toil_threading import _cli, _doctor
from toil_threading._escaping import escaped
from toil_threading._filesystems import FilesystemReport, across_machines

pytestmark = linux_only

SWITCH = "TOIL_THREADING_FOR_TOIL"
RETRY_VARIABLES = tuple(
    f"TOIL_THREADING_LOCK_{name}" for name in ("MAX_TRIES", "BACKOFF", "MAX_BACKOFF")
)
START_UP_FILES = ("toil_threading_for_toil.py", "toil_threading_for_toil.pth")

KEYS = {
    "top": {"version", "python", "core", "switch", "toil", "retry_policy", "directory", "problems"},
    "core": {"in_use", "reason", "problem"},
    "switch": {
        "variable",
        "value",
        "requested",
        "recognised",
        "pth",
        "module",
        "installed",
        "started",
        "on",
        "reason",
        "problem",
    },
    "toil": {"installed", "module", "served", "reason", "problem"},
    "retry_policy": {"max_tries", "backoff", "max_backoff"},
    "retry field": {"value", "source", "problem"},
    "directory": {*FilesystemReport.FIELDS, "across_machines", "problem"},
}


@pytest.fixture(autouse=True)
def nothing_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """No switch and no retry setting from this process's environment: each test asks."""
    for variable in (SWITCH, *RETRY_VARIABLES):
        monkeypatch.delenv(variable, raising=False)


def doctor_json(core: str, *args: str | Path, **env: str) -> tuple[int, dict[str, Any], str]:
    """(exit status, report, stderr) of `doctor --json` in a fresh interpreter on core."""
    done = run_cli(core, "doctor", "--json", *args, env=env)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def assert_the_core(report: dict[str, Any], core: str) -> None:
    assert report["core"]["in_use"] == core
    assert report["core"]["problem"] is None
    if core == "pure":
        assert "TOIL_THREADING_NO_EXTENSIONS is set" in report["core"]["reason"]
    else:
        assert "_core_c" in report["core"]["reason"]


# Exit 0, and the keys of the report.


def test_the_report_has_its_documented_keys_and_nothing_asked_is_exit_0(
    core: str, shm_dir: Path
) -> None:
    if not str(shm_dir).startswith("/dev/shm/"):
        pytest.skip("no /dev/shm on this machine")
    status, report, errors = doctor_json(core, shm_dir)
    assert (status, report["problems"], errors) == (0, [], "")
    assert set(report) == KEYS["top"]
    for section in ("core", "switch", "toil", "directory"):
        assert set(report[section]) == KEYS[section], section
    assert set(report["retry_policy"]) == KEYS["retry_policy"]
    for field in report["retry_policy"].values():
        assert set(field) == KEYS["retry field"]
    # Every key is named in the module's docstring (the directory's as filesystem_report's).
    documented = _doctor.__doc__ or ""
    for name in set().union(*KEYS.values()) - set(FilesystemReport.FIELDS):
        assert f"``{name}``" in documented, name
    assert (report["version"], report["python"]) == (toil_threading.__version__, sys.executable)
    assert_the_core(report, core)
    switch = report["switch"]
    assert (switch["value"], switch["requested"], switch["on"], switch["started"]) == (
        None,
        False,
        False,
        False,
    )
    # The hook is installed beside this interpreter's package, read or not.
    site_packages = Path(toil_threading.__file__).parent.parent
    assert (switch["pth"], switch["module"], switch["installed"]) == (
        str(site_packages / START_UP_FILES[1]),
        str(site_packages / START_UP_FILES[0]),
        True,
    )
    policy = {
        name: (field["value"], field["source"]) for name, field in report["retry_policy"].items()
    }
    assert policy == {
        "max_tries": (10, "default"),
        "backoff": (1.0, "default"),
        "max_backoff": (60.0, "default"),
    }
    # The directory: filesystem_report's findings, and tmpfs is seen by this machine only.
    assert report["directory"] == {
        **toil_threading.filesystem_report(shm_dir).as_dict(),
        "across_machines": "local",
        "problem": None,
    }
    assert report["directory"]["type"] == "tmpfs"


def test_the_switch_on_and_retry_settings_in_force_are_exit_0(core: str) -> None:
    status, report, errors = doctor_json(
        core,
        **{
            SWITCH: "Yes",
            "TOIL_THREADING_LOCK_MAX_TRIES": "4",
            "TOIL_THREADING_LOCK_BACKOFF": "0.5",
        },
    )
    assert (status, report["problems"], errors) == (0, [], "")
    switch = report["switch"]
    assert (switch["value"], switch["requested"], switch["recognised"]) == ("Yes", True, True)
    assert (switch["installed"], switch["started"], switch["on"]) == (True, True, True)
    assert switch["reason"].startswith("on: ")
    policy = {
        name: (field["value"], field["source"]) for name, field in report["retry_policy"].items()
    }
    assert policy == {
        "max_tries": (4, "TOIL_THREADING_LOCK_MAX_TRIES"),
        "backoff": (0.5, "TOIL_THREADING_LOCK_BACKOFF"),
        "max_backoff": (60.0, "default"),
    }
    # Without Toil beside this interpreter nothing is served, and that is no problem.
    assert (report["toil"]["served"], report["toil"]["problem"]) == (False, None)
    assert_the_core(report, core)


@pytest.mark.parametrize("value", ["", "0", "Off"])
def test_the_switch_left_off_is_exit_0(core: str, value: str) -> None:
    status, report, _ = doctor_json(core, **{SWITCH: value})
    assert status == 0
    switch = report["switch"]
    assert (switch["value"], switch["requested"], switch["recognised"], switch["on"]) == (
        value,
        False,
        True,
        False,
    )


def test_the_table_says_the_same(core: str, shm_dir: Path) -> None:
    done = run_cli(core, "doctor", shm_dir, env={SWITCH: "1"})
    assert (done.returncode, done.stderr) == (0, "")
    rows = {line.split()[0]: line.split(None, 1)[1] for line in done.stdout.splitlines()}
    assert rows["core"].startswith({"compiled": "compiled: ", "pure": "pure: "}[core])
    assert rows["switch"].startswith("on: TOIL_THREADING_FOR_TOIL='1'")
    assert rows["max_tries"] == "10 (default)"
    assert rows["directory"] == str(shm_dir)
    assert rows["verdict"] == "everything asked for is in force"
    assert "problem" not in rows


# Exit 1: something asked for is not in force.


@pytest.mark.parametrize("value", ["2", "enable", " on", "\x1b[2J"])
def test_an_unrecognised_switch_is_exit_1(core: str, value: str) -> None:
    status, report, errors = doctor_json(core, **{SWITCH: value})
    assert status == 1
    switch = report["switch"]
    assert (switch["requested"], switch["recognised"], switch["on"]) == (True, False, False)
    assert report["problems"] == [switch["problem"]]
    assert switch["problem"].startswith(f"{SWITCH}={value!a} is neither on (1, true, yes, on)")
    assert errors.count("\n") == 1 and "stays off" in errors  # the hook's own line, once
    table = run_cli(core, "doctor", env={SWITCH: value})
    assert table.returncode == 1
    [problem] = [line for line in table.stdout.splitlines() if line.startswith("problem ")]
    # The value as the hook words it, and that escaped as every line of the table is.
    assert escaped(f"{SWITCH}={value!a}") in problem and "\x1b" not in table.stdout


def test_a_bad_retry_setting_under_the_switch_is_exit_1(core: str) -> None:
    # Under the switch the default is used and doctor says the setting is not in force.
    status, report, errors = doctor_json(
        core, **{SWITCH: "1", "TOIL_THREADING_LOCK_MAX_TRIES": "ten"}
    )
    assert status == 1
    field = report["retry_policy"]["max_tries"]
    assert (field["value"], field["source"]) == (10, "default")
    assert field["problem"].startswith("TOIL_THREADING_LOCK_MAX_TRIES='ten' is not a whole number")
    assert report["problems"] == [field["problem"]]
    assert "TOIL_THREADING_LOCK_MAX_TRIES='ten'" in errors


BAD_TRIES = {"TOIL_THREADING_LOCK_MAX_TRIES": "ten"}
BAD_TRIES_SAID = (
    "toil-threading: TOIL_THREADING_LOCK_MAX_TRIES='ten' is not a whole number from 1 to 1000"
    " (in ASCII digits); the default, 10, is used\n"
)


def test_a_bad_retry_setting_without_the_switch_is_exit_1(core: str) -> None:
    # doctor is how an operator finds a bad setting: the command goes on with the default
    # (one line on stderr) where a program importing the package would stop.
    status, report, errors = doctor_json(core, **BAD_TRIES)
    assert (status, errors) == (1, BAD_TRIES_SAID)
    field = report["retry_policy"]["max_tries"]
    assert (field["value"], field["source"]) == (10, "default")
    assert report["problems"] == [field["problem"]]
    assert field["problem"].startswith("TOIL_THREADING_LOCK_MAX_TRIES='ten' is not a whole")


def test_every_command_goes_on_past_a_bad_retry_setting(core: str, shm_dir: Path) -> None:
    script = Path(sys.executable).parent / "toil-threading"
    for command in (None, [str(script)]):
        done = run_cli(core, "inspect", shm_dir, command=command, env=BAD_TRIES)
        assert (done.returncode, done.stderr) == (0, BAD_TRIES_SAID), done.stderr
        assert done.stdout.startswith(f"{shm_dir}: no mutexes")


def test_a_program_importing_the_package_still_stops_at_a_bad_retry_setting(core: str) -> None:
    done = run_cli(
        core, "-c", "import toil_threading", command=[sys.executable, "-I"], env=BAD_TRIES
    )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        "ValueError: TOIL_THREADING_LOCK_MAX_TRIES='ten' is not a whole number from 1 to 1000"
        " (in ASCII digits)"
    )


def test_a_first_pause_longer_than_the_longest_is_not_in_force(core: str) -> None:
    status, report, _ = doctor_json(
        core,
        **{
            SWITCH: "1",
            "TOIL_THREADING_LOCK_BACKOFF": "30",
            "TOIL_THREADING_LOCK_MAX_BACKOFF": "5",
        },
    )
    assert status == 1
    backoff, longest = report["retry_policy"]["backoff"], report["retry_policy"]["max_backoff"]
    assert (longest["value"], longest["source"], longest["problem"]) == (
        5.0,
        "TOIL_THREADING_LOCK_MAX_BACKOFF",
        None,
    )
    assert (backoff["value"], backoff["source"]) == (1.0, "default")
    assert report["problems"] == ["TOIL_THREADING_LOCK_BACKOFF='30' is not in force: 1 is"]


def test_a_directory_the_package_refuses_is_exit_1(
    core: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # No Ceph here: the core is made to report Ceph's statfs number, which decides.
    monkeypatch.setattr(toil_threading._impl.core, "fs_magic", lambda target: 0x00C36400)
    assert _cli.main(["doctor", "--json", str(tmp_path)]) == 1
    report = json.loads(capsys.readouterr().out)
    directory = report["directory"]
    assert (directory["filesystem"], directory["strategy"], directory["across_machines"]) == (
        "Ceph",
        "refused",
        "refused",
    )
    assert directory["problem"].startswith(f"Refusing to lock under {tmp_path}: Ceph")
    assert report["problems"] == [directory["problem"]]


@pytest.mark.parametrize(
    "verdicts,across",
    [
        (("cluster", "cluster"), "yes"),  # flock alone, across machines (NFS)
        (("node", "cluster"), "yes"),  # a record lock as well, which crosses (GPFS)
        (("unknown", "unknown"), "unknown"),
        (("node", "node"), "no"),  # flock alone, within this machine
        (("local", "local"), "local"),
        (("refused", "cluster"), "refused"),
    ],
)
def test_whether_locks_cross_machines_follows_the_strategy(
    core: str, verdicts: tuple[str, str], across: str
) -> None:
    report = FilesystemReport("/x", None, None, ("fs", *verdicts, "because"))
    assert across_machines(report) == across


# A copy of the package put first on sys.path, to break its compiled core.


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """A copy of the installed package in tmp_path/lib, without its compiled core."""
    shutil.copytree(
        Path(toil_threading.__file__).parent,
        tmp_path / "lib" / "toil_threading",
        ignore=shutil.ignore_patterns("__pycache__", "_core_c.*.so"),
    )
    return tmp_path / "lib"


def doctor_from(where: Path, core_chosen: bool) -> subprocess.CompletedProcess[str]:
    """`doctor --json` on the package copied to where, in a fresh interpreter; with the pure
    core chosen (TOIL_THREADING_NO_EXTENSIONS=1) or not."""
    code = (
        f"import sys; sys.path.insert(0, {str(where)!r})\n"
        "from toil_threading._cli import main\n"
        "raise SystemExit(main(['doctor', '--json']))\n"
    )
    return subprocess.run(
        [sys.executable, "-I", "-c", code],
        cwd="/",
        env=core_environment("pure" if core_chosen else "compiled"),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("compiled_core", ["missing", "broken"])
def test_the_pure_core_where_the_compiled_one_was_expected_is_exit_1(
    core: str, package_copy: Path, compiled_core: str
) -> None:
    if compiled_core == "broken":
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        (package_copy / "toil_threading" / f"_core_c{suffix}").write_bytes(b"not a library\n" * 100)
    # Chosen knowingly, the pure core is what was asked for, whichever the fixture is.
    done = doctor_from(package_copy, core_chosen=core == "pure")
    report = json.loads(done.stdout)
    assert report["core"]["in_use"] == "pure"
    if core == "pure":
        assert (done.returncode, report["core"]["problem"], report["problems"]) == (0, None, [])
        return
    assert done.returncode == 1
    assert "slower pure-Python core" in done.stderr  # the package's own warning at import
    problem = report["core"]["problem"]
    assert problem.startswith("the pure core is in use, not the compiled one: ")
    expected = {
        "missing": "No module named 'toil_threading._core_c'",
        "broken": "invalid ELF header",
    }
    assert expected[compiled_core] in problem
    assert report["problems"] == [problem]


# The switch asked for in an interpreter without its hook.


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A venv with a copy of this package and its start-up files: (its python, its
    site-packages)."""
    venv = tmp_path_factory.mktemp("doctor-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = Path(
        subprocess.run(
            [python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    ours = Path(toil_threading.__file__).parent
    shutil.copytree(ours, site / "toil_threading", ignore=shutil.ignore_patterns("__pycache__"))
    for name in START_UP_FILES:
        shutil.copy(ours.parent / name, site / name)
    yield python, site


def venv_doctor(python: str, core: str, **env: str) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run(
        [python, "-I", "-m", "toil_threading", "doctor", "--json"],
        cwd="/",
        env=core_environment(core, env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


@pytest.mark.parametrize("missing", ["the .pth", "the module", "both"])
def test_the_switch_without_its_hook_is_exit_1(
    core: str, bare_venv: tuple[str, Path], missing: str
) -> None:
    python, site = bare_venv
    status, report, _ = venv_doctor(python, core, **{SWITCH: "1"})
    assert (status, report["switch"]["on"]) == (0, True), report["problems"]
    hidden = {
        "the .pth": START_UP_FILES[1:],
        "the module": START_UP_FILES[:1],
        "both": START_UP_FILES,
    }
    for name in hidden[missing]:
        (site / name).rename(site / f"{name}.hidden")
    try:
        status, report, errors = venv_doctor(python, core, **{SWITCH: "1"})
    finally:
        for name in hidden[missing]:
            (site / f"{name}.hidden").rename(site / name)
    switch = report["switch"]
    assert (status, switch["requested"], switch["installed"], switch["on"]) == (
        1,
        True,
        False,
        False,
    )
    assert report["problems"] == [switch["problem"]]
    assert_the_core(report, core)
    if missing == "the .pth":
        # The module is there to read the value with; nothing imports it at start.
        assert (switch["pth"], switch["recognised"], switch["started"]) == (None, True, False)
        assert "no toil_threading_for_toil.pth is in a site directory" in switch["problem"]
        assert str(site) in switch["problem"]
    elif missing == "the module":
        # The .pth ran, and its import failed: the hook's line on stderr, and doctor says so.
        assert switch["pth"] == str(site / START_UP_FILES[1])
        assert (switch["module"], switch["recognised"]) == (None, None)
        assert "failed as this interpreter started" in switch["problem"]
        assert "toil_threading_for_toil failed" in errors
    else:
        assert (switch["pth"], switch["module"], switch["recognised"]) == (None, None, None)
        assert "no toil_threading_for_toil.pth" in switch["problem"]


def test_the_hook_missing_with_the_switch_off_is_exit_0(
    core: str, bare_venv: tuple[str, Path]
) -> None:
    python, site = bare_venv
    for name in START_UP_FILES:
        (site / name).rename(site / f"{name}.hidden")
    try:
        status, report, _ = venv_doctor(python, core)
    finally:
        for name in START_UP_FILES:
            (site / f"{name}.hidden").rename(site / name)
    assert (status, report["problems"], report["switch"]["installed"]) == (0, [], False)


def test_the_switch_where_no_pth_is_read_is_exit_1(core: str) -> None:
    # python -S reads no site directory: the package only through PYTHONPATH.
    done = subprocess.run(
        [sys.executable, "-S", "-m", "toil_threading", "doctor", "--json"],
        cwd="/",
        env=core_environment(
            core, {SWITCH: "1", "PYTHONPATH": str(Path(toil_threading.__file__).parent.parent)}
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(done.stdout)
    switch = report["switch"]
    assert (done.returncode, switch["started"], switch["on"]) == (1, False, False)
    assert report["problems"] == [
        f"{SWITCH} is set, but this interpreter runs with -S: no .pth file is read"
    ]
    assert_the_core(report, core)


# Exit 2: errors.


@pytest.mark.parametrize(
    "args,said",
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["/", "/"], "unrecognized arguments: /"),
        ([""], "argument DIR: "),
    ],
)
def test_bad_arguments_are_exit_2(core: str, args: list[str], said: str) -> None:
    done = run_cli(core, "doctor", *args)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("usage: toil-threading doctor ")
    assert said in done.stderr.splitlines()[-1]


@pytest.mark.parametrize("case", ["missing", "file", "unreadable"])
def test_a_directory_it_cannot_list_is_exit_2(core: str, case: str, tmp_path: Path) -> None:
    target, wrapper = unlistable(tmp_path, case)
    for flags in ((), ("--json",)):
        done = run_cli(core, "doctor", *flags, target, wrapper=wrapper)
        assert (done.returncode, done.stdout) == (2, "")
        assert done.stderr == f"toil-threading: error: {target}: {UNLISTABLE[case]}\n"
