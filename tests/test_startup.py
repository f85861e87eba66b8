"""The Toil switch as interpreters start: toil_threading_for_toil.pth and its module.

Every test runs real interpreters of venvs made here: Toil and its dependencies linked in
from the Toil interpreter's site-packages (TOIL_THREADING_TOIL_PYTHON), this package and
its start-up files copied from this interpreter's, so that a case can break its own copy.
Each venv reaches its site-packages twice, through lib and through lib64 -> lib, as site
does on distributions where sys.platlibdir is lib64: every .pth there runs twice.  One
more venv gets a copy of the checkout installed editable, by pip, as developers install it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import core_environment, linux_only, skip_or_fail

import toil_threading
from toil_threading._protocol import RETRY_SETTINGS

pytestmark = linux_only

SWITCH = "TOIL_THREADING_FOR_TOIL"
START_UP_FILES = ("toil_threading_for_toil.py", "toil_threading_for_toil.pth")
DEFAULT_POLICY = [10, 1.0, 60.0]

# Where sys.platlibdir is lib64, site reads a venv's lib64/.../site-packages and
# lib/.../site-packages both (venv makes lib64 a link to lib). This .pth, in lib, has
# site read the lib64 spelling too, once (the guard stops it reading itself again).
BOTH_SPELLINGS = """\
# Read site-packages through lib64 as well, as site does where sys.platlibdir is lib64.
import site, sys; lib64 = {lib64!r}; lib64 in sys.path or site.addsitedir(lib64)
"""


def prepend_a_raise(site: Path) -> None:
    init = site / "toil_threading" / "__init__.py"
    init.write_text('raise RuntimeError("this toil_threading is broken")\n' + init.read_text())


# How each venv's copy is broken, by the name tests ask for.
BREAKAGES: dict[str, Callable[[Path], None]] = {
    "intact": lambda site: None,
    "no start-up module": lambda site: (site / "toil_threading_for_toil.py").unlink(),
    "a package that raises": prepend_a_raise,
    "a module of the package missing": lambda site: (
        site / "toil_threading" / "_arena.py"
    ).unlink(),
    "no package": lambda site: shutil.rmtree(site / "toil_threading"),
}


def output(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, cwd="/", timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


class Venvs:
    """Venvs with Toil and this package, one per breakage, made on first use."""

    def __init__(self, toil_python: str, where: Path) -> None:
        self.toil_python = toil_python
        self.where = where
        self.made: dict[str, str] = {}
        self.toil_site = Path(
            output(
                [
                    toil_python,
                    "-I",
                    "-c",
                    "import os, toil; print(os.path.dirname(toil.__path__[0]))",
                ]
            )
        )
        self.ours = Path(toil_threading.__file__).parent
        if not all((self.ours.parent / name).is_file() for name in START_UP_FILES):
            skip_or_fail(f"the start-up files are not installed beside {self.ours}")
        tag = output([toil_python, "-I", "-c", "import sys; print(sys.implementation.cache_tag)"])
        if tag != sys.implementation.cache_tag:
            skip_or_fail(f"the Toil interpreter ({tag}) is not this one's version, for the core")

    def python(self, breakage: str) -> str:
        if breakage not in self.made:
            self.made[breakage] = self._make(breakage)
        return self.made[breakage]

    def _make(self, breakage: str) -> str:
        venv = self.where / breakage.replace(" ", "-")
        output([self.toil_python, "-m", "venv", "--without-pip", str(venv)])
        python = str(venv / "bin" / "python")
        site = Path(
            output(
                [python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
            )
        )
        if not (venv / "lib64").exists():  # venv makes the link on 64-bit Linux only
            (venv / "lib64").symlink_to("lib")
        lib64 = venv / "lib64" / site.relative_to(venv / "lib")
        for entry in self.toil_site.iterdir():
            if not entry.name.startswith("toil_threading") and entry.name != "__pycache__":
                (site / entry.name).symlink_to(entry)
        shutil.copytree(
            self.ours, site / "toil_threading", ignore=shutil.ignore_patterns("__pycache__")
        )
        for name in START_UP_FILES:
            shutil.copy(self.ours.parent / name, site / name)
        (site / "both-spellings.pth").write_text(BOTH_SPELLINGS.format(lib64=str(lib64)))
        BREAKAGES[breakage](site)
        return python


@pytest.fixture(scope="session")
def venvs(toil_python: str, tmp_path_factory: pytest.TempPathFactory) -> Venvs:
    return Venvs(toil_python, tmp_path_factory.mktemp("switch-venvs"))


def without_our_settings(core: str, env: dict[str, str]) -> dict[str, str]:
    """core's environment without the switch's and the retry policy's variables of this
    process's environment, then env."""
    cleared = {SWITCH, *(variable for variable, _, _ in RETRY_SETTINGS)}
    environment = {k: v for k, v in core_environment(core).items() if k not in cleared}
    return {**environment, **env}


def start(python: str, core: str, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run code in a fresh interpreter on core with env, and none of the switch's or the
    retry policy's variables of this process's environment; it must succeed."""
    done = subprocess.run(
        [python, "-I", "-c", textwrap.dedent(code)],
        cwd="/",
        env=without_our_settings(core, env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done


# What a process saw: the switch's finders waiting at start and left after Toil's module
# came, whether that module runs on the package, the site-packages read, the core.
REPORT = """
import json, sys
def waiting():
    return [type(finder).__module__ for finder in sys.meta_path].count("toil_threading_for_toil")
at_start = waiting()
import toil.lib.threading as t
package = sys.modules.get("toil_threading")
print(json.dumps({
    "at_start": at_start,
    "left": waiting(),
    "on_the_package": "__toil_threading__" in vars(t),
    "global_mutex": t.global_mutex.__module__,
    "accelerated": getattr(package, "ACCELERATED", None),
    "site_packages": [path for path in sys.path if path.endswith("site-packages")],
}))
"""


def report(python: str, core: str, **env: str) -> tuple[dict[str, Any], list[str]]:
    """REPORT's findings, and the lines written to stderr."""
    done = start(python, core, REPORT, **env)
    return json.loads(done.stdout), done.stderr.splitlines()


def assert_on_the_package(found: dict[str, Any], core: str) -> None:
    assert found["on_the_package"] is True, found
    assert found["global_mutex"] == "toil_threading"
    assert found["accelerated"] is (core == "compiled")


def assert_toils_own(found: dict[str, Any]) -> None:
    assert found["on_the_package"] is False, found
    assert found["global_mutex"] == "toil.lib.threading"


# Site-packages reached twice: the switch starts once.


def test_site_packages_read_twice_starts_the_switch_once(core: str, venvs: Venvs) -> None:
    found, errors = report(venvs.python("intact"), core, **{SWITCH: "1"})
    lib, lib64 = found["site_packages"]
    assert "/lib/" in lib and lib64 == lib.replace("/lib/", "/lib64/"), found
    assert found["at_start"] == 1, "the .pth read twice started the switch twice"
    assert found["left"] == 0, "a second finder still waits for Toil's module"
    assert_on_the_package(found, core)
    assert errors == []


# A missing start-up module, a failing package: one line, and Toil's own module.


def test_a_missing_start_up_module_is_one_line_and_toil_keeps_its_module(
    core: str, venvs: Venvs
) -> None:
    python = venvs.python("no start-up module")
    found, errors = report(python, core, **{SWITCH: "1"})
    assert_toils_own(found)
    assert len(errors) == 1, errors
    assert errors[0].startswith("toil-threading: ") and SWITCH in errors[0], errors
    assert "toil_threading_for_toil" in errors[0] and "Traceback" not in errors[0]
    # A process that never imports Toil says the same, once.
    assert start(python, core, "pass", **{SWITCH: "1"}).stderr.splitlines() == errors
    # Switched off, nothing is tried and nothing said.
    assert start(python, core, "import toil.lib.threading", **{SWITCH: ""}).stderr == ""


@pytest.mark.parametrize(
    "breakage,named",
    [
        ("a package that raises", "RuntimeError('this toil_threading is broken')"),
        ("a module of the package missing", "toil_threading._arena"),
        ("no package", "No module named 'toil_threading'"),
    ],
)
def test_a_failing_package_is_one_line_and_toil_keeps_its_module(
    core: str, venvs: Venvs, breakage: str, named: str, tmp_path: Path
) -> None:
    python = venvs.python(breakage)
    found, errors = report(python, core, **{SWITCH: "1"})
    assert_toils_own(found)
    assert found["left"] == 0
    assert len(errors) == 1 and errors[0].startswith("toil-threading: "), errors
    assert named in errors[0] and "toil.lib.threading" in errors[0], errors
    # Toil's own module works: its global_mutex, its safe_lock, in a real directory.
    done = start(
        python,
        core,
        f"""
        import os, toil.lib.threading as t
        with t.global_mutex({str(tmp_path)!r}, "m"):
            held = os.listdir({str(tmp_path)!r})
        fd = os.open({str(tmp_path / "f")!r}, os.O_CREAT | os.O_RDWR)
        t.safe_lock(fd)
        t.safe_unlock_and_close(fd)
        print(held, sorted(os.listdir({str(tmp_path)!r})))
        """,
        **{SWITCH: "1"},
    )
    assert done.stdout.strip() == "['toil-mutex-m'] ['f']"


# The switch's values.


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "Yes", "on", "On"])
def test_values_that_switch_it_on(core: str, venvs: Venvs, value: str) -> None:
    found, errors = report(venvs.python("intact"), core, **{SWITCH: value})
    assert_on_the_package(found, core)
    assert errors == []


@pytest.mark.parametrize("value", ["", "0", "false", "False", "no", "NO", "off", "Off"])
def test_values_that_leave_it_off_silently(core: str, venvs: Venvs, value: str) -> None:
    found, errors = report(venvs.python("intact"), core, **{SWITCH: value})
    assert_toils_own(found)
    assert (found["at_start"], found["accelerated"]) == (0, None), "the package was loaded"
    assert errors == []


@pytest.mark.parametrize("value", ["2", "enable", "true ", " on", "y", "\u0661", "-1"])
def test_other_values_warn_once_and_leave_it_off(core: str, venvs: Venvs, value: str) -> None:
    found, errors = report(venvs.python("intact"), core, **{SWITCH: value})
    assert_toils_own(found)
    assert found["at_start"] == 0
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"toil-threading: {SWITCH}={value!a} "), errors
    assert "stays off" in errors[0]


# Bad retry settings under the switch: reported once each, their defaults used.


@pytest.mark.parametrize(
    "settings,policy,named",
    [
        ({"MAX_TRIES": "\u0663"}, DEFAULT_POLICY, ["MAX_TRIES"]),
        ({"MAX_TRIES": "1_0", "BACKOFF": "0.5"}, [10, 0.5, 60.0], ["MAX_TRIES"]),
        ({"BACKOFF": "inf", "MAX_BACKOFF": "nan"}, DEFAULT_POLICY, ["BACKOFF", "MAX_BACKOFF"]),
        ({"MAX_TRIES": "4", "MAX_BACKOFF": "1e3"}, [4, 1.0, 60.0], ["MAX_BACKOFF"]),
        ({"MAX_TRIES": "0"}, DEFAULT_POLICY, ["MAX_TRIES"]),
        # A first pause longer than the longest: both pauses are the defaults.
        ({"BACKOFF": "120", "MAX_TRIES": "3"}, [3, 1.0, 60.0], ["BACKOFF"]),
    ],
)
def test_bad_retry_settings_under_the_switch_are_reported_and_defaulted(
    core: str, venvs: Venvs, settings: dict[str, str], policy: list[float], named: list[str]
) -> None:
    python = venvs.python("intact")
    env = {SWITCH: "1", **{f"TOIL_THREADING_LOCK_{k}": v for k, v in settings.items()}}
    found, errors = report(python, core, **env)
    assert_on_the_package(found, core)
    assert len(errors) == len(named), errors
    for line, name in zip(errors, named, strict=True):
        assert line.startswith(f"toil-threading: TOIL_THREADING_LOCK_{name}="), errors
        assert "default" in line
    # The policy in force, in Toil's process and in one that imports the package itself.
    for code in (
        "import toil.lib.threading, toil_threading as t; print(list(t.lock_retry_policy()))",
        "import toil_threading as t; print(list(t.lock_retry_policy()))",
    ):
        done = start(python, core, code, **env)
        assert json.loads(done.stdout) == policy
        assert done.stderr.splitlines() == errors
    # A process that never imports the package says nothing of it.
    assert start(python, core, "import json", **env).stderr == ""


# doctor in Toil's interpreter: whether toil.lib.threading would be the package's, found
# without importing Toil.

# doctor's report, then on stderr the toil modules imported by the end.
DOCTOR = """
import sys
from toil_threading._cli import main
status = main(["doctor", "--json"])
sys.stderr.write(repr(sorted(name for name in sys.modules if name.split(".")[0] == "toil")))
raise SystemExit(status)
"""


def run_doctor(python: str, core: str, code: list[str], env: dict[str, str]) -> Any:
    """doctor run by python (-I, then code) on core, with env on the core's environment
    cleared of the switch and the retry settings; it must answer 0 or 1."""
    done = subprocess.run(
        [python, "-I", *code],
        cwd="/",
        env=without_our_settings(core, env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode in (0, 1), done.stderr
    return done


def doctor(python: str, core: str, **env: str) -> tuple[int, dict[str, Any], str]:
    """(exit status, report, the toil modules imported) of doctor in a fresh python."""
    done = run_doctor(python, core, ["-c", DOCTOR], env)
    return done.returncode, json.loads(done.stdout), done.stderr.splitlines()[-1]


def test_doctor_says_toil_would_be_served_without_importing_it(core: str, venvs: Venvs) -> None:
    python = venvs.python("intact")
    toils_module = venvs.toil_site / "toil" / "lib" / "threading.py"
    status, report, imported = doctor(python, core, **{SWITCH: "1"})
    assert (status, report["problems"], imported) == (0, [], "[]")
    assert report["core"]["in_use"] == core
    toil = report["toil"]
    assert (toil["installed"], toil["served"]) == (True, True)
    # Toil is linked into the venv: its module as the venv sees it.
    assert Path(toil["module"]).resolve() == toils_module.resolve()
    assert toil["module"].startswith(str(Path(python).parent.parent))
    assert toil["reason"].endswith(f"{toil_threading.__version__} as Toil imports it")
    status, report, imported = doctor(python, core)
    assert (status, report["toil"]["served"], imported) == (0, False, "[]")
    assert report["toil"]["reason"].endswith("stays Toil's own: the switch is off")


def test_doctor_says_when_the_package_would_fail_toil(core: str, venvs: Venvs) -> None:
    status, report, _ = doctor(
        venvs.python("a module of the package missing"), core, **{SWITCH: "1"}
    )
    toil = report["toil"]
    assert (status, toil["served"], report["problems"]) == (1, False, [toil["problem"]])
    assert "toil_threading._arena" in toil["problem"]


# An editable install (pip install -e) gets the start-up hook too.

# What an install of the checkout needs, copied (the package without anything built in it).
CHECKOUT_FILES = ("setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in")
BUILT = shutil.ignore_patterns("__pycache__", "*.so", "*.c")


@pytest.fixture(scope="module")
def editable(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    """A fresh venv with a copy of the checkout installed by `pip install -e`: its python,
    its site-packages, the copy."""
    checkout = Path(__file__).resolve().parent.parent
    if not (checkout / "setup.py").is_file():
        skip_or_fail(f"no checkout at {checkout} to install editable")
    where = tmp_path_factory.mktemp("editable")
    copy = where / "checkout"
    for folder in ("toil_threading", "csrc"):
        shutil.copytree(checkout / folder, copy / folder, ignore=BUILT)
    for name in CHECKOUT_FILES:
        shutil.copy(checkout / name, copy / name)
    output([sys.executable, "-m", "venv", str(where / "venv")])
    python = str(where / "venv" / "bin" / "python")
    # The build requirements come from the package index (pip's build isolation).
    done = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", str(copy)],
        cwd=where,
        env={k: v for k, v in os.environ.items() if k != "TOIL_THREADING_NO_EXTENSIONS"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    unreachable = ("No matching distribution found", "Failed to establish a new connection")
    if done.returncode != 0 and any(words in done.stderr for words in unreachable):
        skip_or_fail(f"pip could not fetch the build requirements: {done.stderr[-2000:]}")
    assert done.returncode == 0, done.stdout + done.stderr
    site = Path(
        output([python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    )
    return python, site, copy


def editable_doctor(python: str, core: str, **env: str) -> tuple[int, dict[str, Any]]:
    done = run_doctor(python, core, ["-m", "toil_threading", "doctor", "--json"], env)
    assert done.stderr == ""
    return done.returncode, json.loads(done.stdout)


def test_an_editable_install_has_the_switch(core: str, editable: tuple[str, Path, Path]) -> None:
    python, site, copy = editable
    # Editable: the package is the copy itself, its compiled core built in place.
    package = output([python, "-I", "-c", "import toil_threading; print(toil_threading.__file__)"])
    assert package == str(copy / "toil_threading" / "__init__.py")
    assert list((copy / "toil_threading").glob("_core_c.*.so")), "no compiled core built in place"
    # The start-up files are in site-packages, installed (so removed) with the package.
    [record] = site.glob("toil_threading-*.dist-info/RECORD")
    recorded = {line.split(",")[0] for line in record.read_text().splitlines()}
    assert set(START_UP_FILES) <= recorded, recorded
    status, report = editable_doctor(python, core, **{SWITCH: "1"})
    assert (status, report["problems"]) == (0, [])
    switch = report["switch"]
    assert (switch["installed"], switch["started"], switch["on"]) == (True, True, True)
    assert (switch["pth"], switch["module"]) == (
        str(site / START_UP_FILES[1]),
        str(site / START_UP_FILES[0]),
    )
    assert report["core"]["in_use"] == core


def test_an_editable_install_without_the_pth_is_not_installed(
    core: str, editable: tuple[str, Path, Path]
) -> None:
    python, site, _ = editable
    pth = site / START_UP_FILES[1]
    pth.rename(site / "hidden")
    try:
        status, report = editable_doctor(python, core, **{SWITCH: "1"})
    finally:
        (site / "hidden").rename(pth)
    switch = report["switch"]
    assert (status, switch["installed"], switch["pth"], switch["on"]) == (1, False, None, False)
    assert report["problems"] == [switch["problem"]]
    assert switch["problem"].startswith(
        f"{SWITCH} is set, but no toil_threading_for_toil.pth is in a site directory"
    )
