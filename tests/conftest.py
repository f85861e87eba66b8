"""Shared fixtures: every test body runs once per core, against real files and processes."""

from __future__ import annotations

import fcntl
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import toil_threading

CORE_MODULES = {"compiled": "toil_threading._core_c", "pure": "toil_threading._core_py"}
# Both cores unless TOIL_THREADING_TEST_CORES names fewer: an install made without the
# compiled core on purpose tests "pure" only.
CORES = tuple(
    name
    for name in os.environ.get("TOIL_THREADING_TEST_CORES", "compiled,pure").split(",")
    if name in CORE_MODULES
)
# Set by .ci/run: tests that would skip for want of something CI installs must fail.
REQUIRE_ALL = bool(os.environ.get("TOIL_THREADING_REQUIRE_ALL_TESTS"))


def skip_or_fail(reason: str) -> None:
    """Skip the test, or fail it where every test is required to run."""
    if REQUIRE_ALL:
        pytest.fail(f"{reason} (TOIL_THREADING_REQUIRE_ALL_TESTS is set, so this must run)")
    pytest.skip(reason)


def load_core(name: str) -> ModuleType:
    # The compiled core is imported directly, so a missing build fails the test
    # instead of quietly testing the pure twin twice.
    return importlib.import_module(CORE_MODULES[name])


@pytest.fixture(params=CORES)
def core(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test with the facade on the given core; yields the core's name.

    Forked children inherit the choice; subprocesses get it from `python_with_core`.
    """
    before = toil_threading._impl.core
    toil_threading._impl.use_core(load_core(request.param))
    yield request.param
    toil_threading._impl.use_core(before)


def core_prelude(core: str) -> str:
    """Python source that points a fresh interpreter's facade at the given core."""
    return (
        "import importlib, toil_threading, toil_threading._impl\n"
        f"toil_threading._impl.use_core(importlib.import_module({CORE_MODULES[core]!r}))\n"
    )


def core_environment(core: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment (with env) for a child that runs on core from its start,
    whatever TOIL_THREADING_NO_EXTENSIONS this process was given."""
    environment = {k: v for k, v in os.environ.items() if k != "TOIL_THREADING_NO_EXTENSIONS"}
    if core == "pure":
        environment["TOIL_THREADING_NO_EXTENSIONS"] = "1"
    environment.update(env or {})
    return environment


def python_with_core(
    core: str, code: str, *, env: dict[str, str] | None = None, **popen: object
) -> subprocess.Popen[str]:
    """Start `python -c` running code on the given core, outside the checkout.

    The working directory is a temporary one so that the installed package is imported,
    never the source tree beside the tests.
    """
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-c", core_prelude(core) + code],
        cwd=tempfile.gettempdir(),
        env=core_environment(core, env),
        text=True,
        **popen,
    )


# The command line, as `python -I -m toil_threading` (-I: never the checkout's folder).
CLI = (sys.executable, "-I", "-m", "toil_threading")


# What an error says of a directory that cannot be listed, by how it cannot.
UNLISTABLE = {
    "missing": "No such file or directory",
    "file": "Not a directory",
    "unreadable": "Permission denied",
}


def unlistable(tmp_path: Path, case: str) -> tuple[Path, tuple[str, ...]]:
    """A path that cannot be listed for the reason case names (a key of UNLISTABLE), and
    the wrapper (for run_cli) that makes an unreadable one unreadable even to root."""
    target = tmp_path / case
    wrapper: tuple[str, ...] = ()
    if case == "file":
        target.touch()
    elif case == "unreadable":
        target.mkdir(mode=0)
        if os.geteuid() == 0:
            # Root reads any directory: run the command without the capabilities that
            # let it, so the mode is obeyed as for anyone else.
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                skip_or_fail("running as root and setpriv(1) is missing: cannot deny a read")
            wrapper = (str(setpriv), "--bounding-set=-dac_override,-dac_read_search")
    return target, wrapper


def run_cli(
    core: str,
    *args: str | Path,
    command: list[str] | None = None,
    wrapper: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the command line on the given core, outside the checkout, to its end.

    wrapper goes before the command (for example setpriv, to run it with fewer rights).
    """
    return subprocess.run(
        [*wrapper, *(command or CLI), *map(str, args)],
        cwd="/",
        env=core_environment(core, env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def start_verify_holder(
    core: str, directory: Path, seconds: float, seen_through: Path | None = None
) -> subprocess.Popen[str]:
    """`verify DIR --hold SECONDS`, started and waited for until its scratch file names
    its holder (as seen through seen_through, another mount of directory, where given)."""
    holder = subprocess.Popen(
        [*CLI, "verify", str(directory), "--hold", str(seconds), "--json"],
        cwd="/",
        env=core_environment(core),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    scratch = (seen_through or directory) / "toil-threading-verify"
    deadline = time.monotonic() + 30
    while not (scratch.exists() and scratch.stat().st_size):
        assert time.monotonic() < deadline and holder.poll() is None, holder.communicate()
        time.sleep(0.02)
    return holder


# Linux-only machinery (/proc, cgroups, affinity, LD_PRELOAD, namespaces): tests that need
# it carry this mark, so the wheels' suite also runs on macOS.
linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="needs Linux (/proc and friends)"
)


def blocked_waiters() -> set[int]:
    """PIDs waiting for a lock, from /proc/locks ("1: -> FLOCK ..." lines)."""
    with open("/proc/locks") as locks:
        return {int(line.split()[5]) for line in locks if line.split()[1] == "->"}


def wait_until_blocked(pid: int, timeout: float = 30.0) -> None:
    """Wait until process pid waits in the kernel for a lock (its "->" line in /proc/locks)."""
    deadline = time.monotonic() + timeout
    while pid not in blocked_waiters():
        assert time.monotonic() < deadline, f"process {pid} never blocked on a lock"
        time.sleep(0.01)


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"))


def assert_locked_elsewhere(path: str | os.PathLike[str]) -> None:
    """Fail unless another open file holds an flock on path (ours would conflict)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def fds_open_on(path: str | os.PathLike[str]) -> list[int]:
    """This process's descriptors open on path."""
    found = []
    for name in open_fds():
        try:
            if os.readlink(f"/proc/self/fd/{name}") == os.fspath(path):
                found.append(int(name))
        except FileNotFoundError:  # the descriptor listing the directory itself
            pass
    return found


@pytest.fixture
def no_fd_leak() -> Iterator[None]:
    """Fail the test if it ends with more descriptors open than it started with."""
    before = open_fds()
    yield
    leaked = open_fds() - before
    assert not leaked, f"descriptors leaked: {sorted(leaked)}"


@pytest.fixture(params=["/dev/shm", "disk"])
def lock_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A fresh directory on tmpfs (/dev/shm) or on the disk that holds pytest's tmp_path."""
    if request.param == "disk":
        yield tmp_path
        return
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm on this machine")
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="toil-threading-test-") as name:
        yield Path(name)


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A fresh directory on tmpfs (/dev/shm), or in the temporary folder where there is none."""
    where = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=where, prefix="toil-threading-test-") as name:
        yield Path(name)


@pytest.fixture(scope="session")
def toil_python() -> str:
    """An interpreter that can import Toil's own toil.lib.threading, for interop tests.

    TOIL_THREADING_TOIL_PYTHON names one (Toil is never a dependency of this package);
    otherwise this interpreter, if Toil happens to be installed in it.
    """
    candidates = [os.environ.get("TOIL_THREADING_TOIL_PYTHON", ""), sys.executable]
    for python in filter(None, candidates):
        probe = subprocess.run(
            [python, "-I", "-c", "import toil.lib.threading"], capture_output=True, cwd="/"
        )
        if probe.returncode == 0:
            return python
    skip_or_fail("Toil is not importable: set TOIL_THREADING_TOIL_PYTHON to a Python with toil")
    raise AssertionError("unreachable")


def run_toil(toil_python: str, code: str, **popen: object) -> subprocess.Popen[str]:
    """Start code under Toil's own implementation, which `import toil_threading` gets."""
    prelude = "import sys, toil.lib.threading\nsys.modules['toil_threading'] = toil.lib.threading\n"
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [toil_python, "-I", "-c", prelude + code],
        cwd="/",
        text=True,
        **popen,
    )


def build_c(source: Path, output: Path, *flags: str) -> str:
    """Compile source into output with the system compiler (cc) and flags; the test is
    skipped (or fails, where every test must run) without a compiler, and fails when the
    build does."""
    compiler = shutil.which("cc")
    if compiler is None:
        skip_or_fail(f"no C compiler (cc) to build {source.name}")
    build = subprocess.run(
        [str(compiler), "-O2", "-Wall", *flags, "-o", str(output), str(source)],
        cwd=output.parent,
        capture_output=True,
        text=True,
    )
    if build.returncode != 0:
        pytest.fail(f"building {source.name} failed:\n{build.stdout}{build.stderr}")
    return str(output)


SWAPPER_SOURCE = Path(__file__).with_name("swapper.c")


@pytest.fixture(scope="session")
def swapper() -> Iterator[str]:
    """The swapper program, compiled from swapper.c with the system compiler.

    The race tests run it as nobody, so it is built in a directory anyone may enter
    (pytest's own temporary directory is root's alone)."""
    with tempfile.TemporaryDirectory(prefix="toil-threading-swapper-") as out_dir:
        os.chmod(out_dir, 0o755)
        program = build_c(SWAPPER_SOURCE, Path(out_dir) / "swapper")
        os.chmod(program, 0o755)
        yield program


FAULT_INJECTION_SOURCE = Path(__file__).with_name("faultinject.c")


@pytest.fixture(scope="session")
def faultlib(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of libfaultinject.so, compiled from faultinject.c with the system compiler."""
    library = tmp_path_factory.mktemp("faultinject") / "libfaultinject.so"
    return build_c(FAULT_INJECTION_SOURCE, library, "-shared", "-fPIC", "-ldl")


# Two real users: root, and nobody in a forked child.


def needs_root() -> None:
    if os.geteuid() != 0:
        skip_or_fail("needs root, to act as a second user (nobody) with setuid")


@pytest.fixture
def open_parent() -> Iterator[Path]:
    """A fresh directory (on tmpfs where there is one) that every user may enter."""
    where = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=where, prefix="toil-threading-users-") as name:
        os.chmod(name, 0o755)
        yield Path(name)


@pytest.fixture
def shared_dir(open_parent: Path) -> Path:
    """A sticky world-writable directory (1777), like /tmp or /dev/shm."""
    directory = open_parent / "shared"
    directory.mkdir()
    directory.chmod(0o1777)
    return directory
