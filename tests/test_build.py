"""setup.py: without Cython or a C compiler the build installs the pure core and says why;
anything else that goes wrong (a broken source, or any failure under cibuildwheel) fails it.

Each test builds a wheel with pip from a copy of the sources, with setuptools and Cython
from a folder of their own (no build isolation, so a test can leave Cython out).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest
from conftest import skip_or_fail

SOURCES = Path(__file__).resolve().parent.parent
# What a build reads: the sdist's files less the tests.
BUILD_INPUTS = ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE")
BUILD_FOLDERS = ("csrc", "toil_threading")
# The compiled core's file, whatever this interpreter names extension modules.
COMPILED_CORE = tuple(f"toil_threading/_core_c{suffix}" for suffix in EXTENSION_SUFFIXES)


@pytest.fixture(scope="module")
def build_tools(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders holding setuptools and Cython, each installed there by pip."""
    tools = tmp_path_factory.mktemp("build-tools")
    folders = {"setuptools": tools / "setuptools", "Cython": tools / "cython"}
    requirements = {"setuptools": "setuptools>=77", "Cython": "Cython>=3.0"}
    for name, folder in folders.items():
        install = ["install", "--quiet", "--target", str(folder), requirements[name]]
        installed = subprocess.run(
            [sys.executable, "-m", "pip", *install],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if installed.returncode != 0:
            skip_or_fail(f"pip could not install {name}: {installed.stderr.strip()}")
    return folders


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    """A copy of what a build reads, without anything a build in the checkout left."""
    copy = tmp_path / "sources"
    copy.mkdir()
    for name in BUILD_INPUTS:
        shutil.copy2(SOURCES / name, copy / name)
    leftovers = shutil.ignore_patterns("*.so", "*.c", "__pycache__")
    for name in BUILD_FOLDERS:
        shutil.copytree(SOURCES / name, copy / name, ignore=leftovers)
    return copy


def environment_with(**settings: str) -> dict[str, str]:
    """This process's environment less what would steer a build or the core chosen at
    import (whatever the suite runs under), with settings."""
    steering = ("CC", "CIBUILDWHEEL", "PYTHONPATH", "TOIL_THREADING_NO_EXTENSIONS")
    environment = {key: value for key, value in os.environ.items() if key not in steering}
    return {**environment, **settings}


def build_wheel(
    sources: Path, tools: list[Path], env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], list[Path]]:
    """pip wheel on sources with the given tool folders; what it printed, the wheels made."""
    environment = environment_with(PYTHONPATH=os.pathsep.join(map(str, tools)), **(env or {}))
    wheels = sources.parent / "wheels"
    wheel = ["wheel", "--verbose", "--no-deps", "--no-cache-dir", "--no-build-isolation"]
    done = subprocess.run(
        [sys.executable, "-m", "pip", *wheel, "--wheel-dir", str(wheels), str(sources)],
        cwd=sources.parent,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
        check=False,
    )
    return done, sorted(wheels.glob("*.whl"))


def assert_installs_the_pure_core(wheel: Path, target: Path) -> None:
    """The wheel has no compiled core, and installed it imports and runs on the pure one."""
    with zipfile.ZipFile(wheel) as contents:
        names = contents.namelist()
        assert "toil_threading/_core_py.py" in names
        assert not [name for name in names if name.endswith(COMPILED_CORE)], names
        contents.extractall(target)
    imported = subprocess.run(
        [sys.executable, "-c", "import toil_threading as t; print(t.ACCELERATED, t.cpu_count())"],
        cwd=target.parent,
        env=environment_with(PYTHONPATH=str(target)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr
    accelerated, count = imported.stdout.split()
    assert accelerated == "False" and int(count) >= 1
    assert "using its slower pure-Python core" in imported.stderr


def test_without_a_c_compiler_the_pure_core_is_installed_saying_why(
    build_tools: dict[str, Path], sources: Path
) -> None:
    done, wheels = build_wheel(
        sources, [build_tools["setuptools"], build_tools["Cython"]], {"CC": "/nonexistent"}
    )
    assert done.returncode == 0, done.stdout
    assert (
        "the compiled core of toil-threading is not built: "
        "no C compiler: '/nonexistent' is not found"
    ) in done.stdout
    [wheel] = wheels
    assert_installs_the_pure_core(wheel, sources.parent / "installed")


def test_without_cython_the_pure_core_is_installed_saying_why(
    build_tools: dict[str, Path], sources: Path
) -> None:
    done, wheels = build_wheel(sources, [build_tools["setuptools"]])
    assert done.returncode == 0, done.stdout
    assert "the compiled core of toil-threading is not built: Cython is not installed" in (
        done.stdout
    )
    [wheel] = wheels
    assert wheel.name.endswith("-py3-none-any.whl")  # nothing compiled, so it says so
    assert_installs_the_pure_core(wheel, sources.parent / "installed")


@pytest.mark.parametrize(
    ("source", "fault", "reported"),
    [
        ("csrc/_core_c.pyx", "def broken(:\n", "csrc/_core_c.pyx:"),
        ("csrc/compat.h", "#error this header is broken\n", "this header is broken"),
    ],
    ids=["cython-error", "c-error"],
)
def test_a_broken_source_fails_the_build(
    build_tools: dict[str, Path], sources: Path, source: str, fault: str, reported: str
) -> None:
    with open(sources / source, "a") as broken:
        broken.write(fault)
    done, wheels = build_wheel(sources, [build_tools["setuptools"], build_tools["Cython"]])
    assert done.returncode != 0
    assert reported in done.stdout
    assert "not built" not in done.stdout  # no word of falling back
    assert wheels == []


def test_under_cibuildwheel_a_missing_compiler_fails_the_build(
    build_tools: dict[str, Path], sources: Path
) -> None:
    done, wheels = build_wheel(
        sources,
        [build_tools["setuptools"], build_tools["Cython"]],
        {"CC": "/nonexistent", "CIBUILDWHEEL": "1"},
    )
    assert done.returncode != 0
    assert (
        "error: the compiled core of toil-threading cannot be built: "
        "no C compiler: '/nonexistent' is not found"
    ) in done.stdout
    assert wheels == []
