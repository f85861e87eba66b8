"""The package as a whole: which core is used, the twins' crossing, the public names."""

from __future__ import annotations

import doctest
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from conftest import CORES, core_environment, load_core

import toil_threading

needs_compiled = pytest.mark.skipif(
    "compiled" not in CORES, reason="testing an install made without the compiled core"
)

P, K = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
NONE = inspect.Parameter.empty
# Toil's parameters, in order, with their defaults; keyword-only additions are ours.
REFERENCE_SIGNATURES = {
    "safe_lock": [("fd", P, NONE), ("block", P, True), ("shared", P, False), ("timeout", K, None)],
    "safe_unlock_and_close": [("fd", P, NONE)],
    "locked_file_is": [("fd", P, NONE), ("path", P, NONE)],
    "ensure_filesystem_lockable": [("path", P, NONE), ("timeout", P, 30), ("hint", P, None)],
    "global_mutex": [("base_dir", P, NONE), ("mutex", P, NONE), ("timeout", K, None)],
}


def run_fresh(code: str, **env: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=tempfile.gettempdir(),
        env=core_environment("compiled", env),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@needs_compiled
def test_cpython_without_the_switch_uses_the_compiled_core() -> None:
    if sys.implementation.name != "cpython":
        pytest.skip("the compiled core is for CPython only")
    out = run_fresh("import toil_threading as t; print(t.ACCELERATED, t._impl.core.__name__)")
    assert out == "True toil_threading._core_c"


def test_the_switch_chooses_the_pure_core() -> None:
    out = run_fresh(
        "import sys, toil_threading as t; "
        "print(t.ACCELERATED, t._impl.core.__name__, 'toil_threading._core_c' in sys.modules)",
        TOIL_THREADING_NO_EXTENSIONS="1",
    )
    assert out == "False toil_threading._core_py False"


def test_accelerated_matches_the_core_in_use() -> None:
    built = importlib.util.find_spec("toil_threading._core_c") is not None
    expected = built and not os.environ.get("TOIL_THREADING_NO_EXTENSIONS")
    assert toil_threading.ACCELERATED is expected
    assert toil_threading._impl.core.__name__.endswith("_core_c" if expected else "_core_py")


def crossing(module: object) -> dict[str, inspect.Signature]:
    """The public functions a core defines (not those it imports), and of each class it
    defines, the public and context-manager methods and the data attributes (a compiled
    class's constructor signature is opaque: stubtest holds it to the .pyi)."""
    found = {}
    for name, value in vars(module).items():
        if name.startswith("_") or not callable(value):
            continue
        if getattr(value, "__module__", "") != getattr(module, "__name__", None):
            continue
        if not isinstance(value, type):
            found[name] = inspect.signature(value)
            continue
        for attribute in dir(value):
            member = getattr(value, attribute)
            if attribute in ("__enter__", "__exit__") or (
                not attribute.startswith("_") and callable(member)
            ):
                signature = inspect.signature(member)  # less self, whose kind differs
                found[f"{name}.{attribute}"] = signature.replace(
                    parameters=list(signature.parameters.values())[1:]
                )
            elif not attribute.startswith("_") and type(member).__name__ in (
                "property",
                "getset_descriptor",
                "member_descriptor",  # a pure class's __slots__ field, a compiled one's readonly
            ):
                found[f"{name}.{attribute}"] = inspect.Signature()
    return found


def shape(signature: inspect.Signature) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


@needs_compiled
def test_twins_have_identical_primitives() -> None:
    compiled = crossing(load_core("compiled"))
    pure = crossing(load_core("pure"))
    assert sorted(compiled) == sorted(pure)
    assert len(compiled) >= 8
    for name in compiled:
        assert shape(compiled[name]) == shape(pure[name]), name


def test_reference_signatures() -> None:
    for name, expected in REFERENCE_SIGNATURES.items():
        assert shape(inspect.signature(getattr(toil_threading, name))) == expected, name
    assert isinstance(toil_threading.logger, __import__("logging").Logger)
    assert toil_threading.logger.name == "toil_threading"
    assert issubclass(toil_threading.ExceptionalThread, threading.Thread)


def test_every_exported_name_exists() -> None:
    for name in toil_threading.__all__:
        assert hasattr(toil_threading, name), name


THREAD_RAISES = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


@THREAD_RAISES
def test_exceptional_thread_doctests() -> None:
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = finder.find(
        toil_threading.ExceptionalThread,
        globs={"ExceptionalThread": toil_threading.ExceptionalThread},
    )
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted >= 8
    assert result.failed == 0


@THREAD_RAISES
def test_exceptional_thread_raises_once_and_not_on_timeout() -> None:
    release = threading.Event()

    def fail_later() -> None:
        release.wait(10)
        raise OSError("boom")

    thread = toil_threading.ExceptionalThread(target=fail_later)
    thread.start()
    thread.join(timeout=0.05)  # still running: nothing to raise
    assert thread.is_alive()
    release.set()
    with pytest.raises(OSError, match="boom"):
        thread.join()
    thread.join()
    assert thread.exc_info is None


def test_exceptional_thread_without_error_returns() -> None:
    results: list[int] = []
    thread = toil_threading.ExceptionalThread(target=results.append, args=(7,))
    thread.start()
    thread.join()
    assert results == [7]


def test_workflow_copies_are_identical() -> None:
    # GitHub runs workflows only from .github/workflows/ (and follows no symlink there);
    # the layout keeps wheels.yml at the top: the two must not drift apart.
    root = Path(__file__).resolve().parent.parent
    top, github = root / "wheels.yml", root / ".github" / "workflows" / "wheels.yml"
    if not top.exists():
        pytest.skip("not a checkout (an sdist carries no workflow)")
    assert top.read_bytes() == github.read_bytes()


def test_a_checkout_shadowing_the_installed_package_is_named_in_the_warning() -> None:
    checkout = Path(__file__).resolve().parent.parent
    source = checkout / "toil_threading"
    if not (checkout / "csrc").is_dir() or list(source.glob("_core_c*.so")):
        pytest.skip("not run from a checkout without a compiled core built in place")
    done = subprocess.run(
        [sys.executable, "-c", "import toil_threading as t; print(t.ACCELERATED)"],
        cwd=checkout,  # the current directory comes first on sys.path: the source folder wins
        env=core_environment("compiled"),
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == "False\n"
    assert f"the toil_threading imported is the source folder {source}" in done.stderr
    assert "it shadows the installed package" in done.stderr
    assert "Run from another directory, or with `python -I`" in done.stderr


# The retry settings read at import, outside the Toil switch (tests/test_startup.py has
# them under it): plain ASCII decimals in range, anything else a ValueError naming them.

RETRY_SETTINGS = ("MAX_TRIES", "BACKOFF", "MAX_BACKOFF")


def import_with_retry_settings(core: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """Import the package in a fresh interpreter on core, with the TOIL_THREADING_LOCK_*
    settings given (none of this process's, and no Toil switch); it prints the policy."""
    cleared = {"TOIL_THREADING_FOR_TOIL", *(f"TOIL_THREADING_LOCK_{k}" for k in RETRY_SETTINGS)}
    environment = {k: v for k, v in core_environment(core).items() if k not in cleared}
    environment.update({f"TOIL_THREADING_LOCK_{k}": v for k, v in settings.items()})
    return subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            "import toil_threading as t; print(list(t.lock_retry_policy()))",
        ],
        cwd="/",
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "settings,policy",
    [
        ({"MAX_TRIES": "1", "BACKOFF": "0.25", "MAX_BACKOFF": "0.5"}, [1, 0.25, 0.5]),
        ({"MAX_TRIES": "1000", "BACKOFF": "3600", "MAX_BACKOFF": "3600.0"}, [1000, 3600.0, 3600.0]),
        ({"MAX_TRIES": "007", "BACKOFF": "60.000"}, [7, 60.0, 60.0]),
        # Only the longest pause, below the default first one: every pause is that long.
        ({"MAX_BACKOFF": "0.5"}, [10, 1.0, 0.5]),
        ({"MAX_TRIES": "", "BACKOFF": "", "MAX_BACKOFF": ""}, [10, 1.0, 60.0]),
    ],
)
def test_retry_settings_in_range_are_taken(
    core: str, settings: dict[str, str], policy: list[float]
) -> None:
    done = import_with_retry_settings(core, **settings)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == policy
    assert done.stderr == ""


NOT_PLAIN_DECIMALS = [
    "\u0663",  # ARABIC-INDIC DIGIT THREE, which int() reads as 3
    "\uff13",  # FULLWIDTH DIGIT THREE
    "1_0",
    "+3",
    " 3",
    "3\n",
    "-1",
    "0x10",
    "1e2",
    "many",
    "10000000000",
]


@pytest.mark.parametrize(
    "name,value",
    [("MAX_TRIES", value) for value in [*NOT_PLAIN_DECIMALS, "3.0", "0", "1001"]]
    + [
        ("BACKOFF", value)
        for value in [*NOT_PLAIN_DECIMALS, "inf", "nan", "1e-3", "\u0660.5", "0", "0.0"]
    ]
    + [("BACKOFF", value) for value in ["3600.5", "1_0.5", ".5", "1.", "1.5.0"]]
    + [("MAX_BACKOFF", value) for value in ["Infinity", "NaN", "3601", "1E3", "0.5s", "0"]],
)
def test_bad_retry_settings_raise_naming_the_variable(core: str, name: str, value: str) -> None:
    done = import_with_retry_settings(core, **{name: value})
    assert done.returncode != 0
    last = done.stderr.splitlines()[-1]
    assert last.startswith(f"ValueError: TOIL_THREADING_LOCK_{name}={value!a} is not "), last
    assert "ASCII digits" in last and ("1 to 1000" if name == "MAX_TRIES" else "3600") in last


@pytest.mark.parametrize(
    "settings,named",
    [
        (
            {"BACKOFF": "120"},
            "BACKOFF=120 is longer than the longest pause, "
            "TOIL_THREADING_LOCK_MAX_BACKOFF=60 (its default)",
        ),
        (
            {"BACKOFF": "5", "MAX_BACKOFF": "2.5"},
            "BACKOFF=5 is longer than the longest pause, TOIL_THREADING_LOCK_MAX_BACKOFF=2.5",
        ),
    ],
)
def test_a_first_pause_longer_than_the_longest_is_refused(
    core: str, settings: dict[str, str], named: str
) -> None:
    done = import_with_retry_settings(core, **settings)
    assert done.returncode != 0
    assert done.stderr.splitlines()[-1] == f"ValueError: TOIL_THREADING_LOCK_{named}"
