"""The two cores fail alike: the same exception type, errno, file name and message.

Each case sets up a failure, then makes the same call on the compiled core and on the
pure one (switched in one process); what each raised, or returned, must be identical.
Failures that need another user or an injected system-call error run in a child.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from children import NOBODY, in_child
from conftest import CORES, linux_only, load_core, python_with_core

import toil_threading
from toil_threading import _impl

pytestmark = [
    linux_only,
    pytest.mark.skipif(len(CORES) < 2, reason="needs both cores installed"),
]


def outcome(call: Callable[[], object]) -> tuple[object, ...]:
    """What call did: ("returned", value) or (type, errno, filename, message)."""
    try:
        return ("returned", call())
    except Exception as error:
        message = str(error)
        if isinstance(error, toil_threading.LockTimeout):  # the time and the holder differ
            message = message.replace(f"{error.waited:.3g} s", "SECONDS s")
            message = message.replace(f"PID {error.holder}", "PID HOLDER")
        return (
            type(error).__name__,
            getattr(error, "errno", None),
            getattr(error, "filename", None),
            message,
        )


def on_core(core: str, call: Callable[[], object]) -> tuple[object, ...]:
    """outcome(call) with the facade on core, in this process."""
    before = _impl.core
    _impl.use_core(load_core(core))
    try:
        return outcome(call)
    finally:
        _impl.use_core(before)


def assert_alike(found: dict[str, tuple[object, ...]], expected_type: str) -> None:
    compiled, pure = found["compiled"], found["pure"]
    assert compiled == pure, f"the cores differ:\n  compiled: {compiled}\n  pure:     {pure}"
    assert compiled[0] == expected_type, compiled


# Each case: set up a failure in a fresh directory, and return the call that meets it.

Case = Callable[[Path], Callable[[], object]]


def mutex(base_dir: Path, timeout: float | None = 5) -> Callable[[], object]:
    def call() -> None:
        with toil_threading.global_mutex(base_dir, "m", timeout=timeout):
            pass

    return call


def missing_base_dir(d: Path) -> Callable[[], object]:
    return mutex(d / "missing")


def base_dir_is_a_file(d: Path) -> Callable[[], object]:
    (d / "file").touch()
    return mutex(d / "file")


def symlink_at_the_lock_path(d: Path) -> Callable[[], object]:
    (d / "toil-mutex-m").symlink_to(d / "elsewhere")
    return mutex(d)


def fifo_at_the_lock_path(d: Path) -> Callable[[], object]:
    os.mkfifo(d / "toil-mutex-m")
    return mutex(d)


def socket_at_the_lock_path(d: Path) -> Callable[[], object]:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(d / "toil-mutex-m"))
    return lambda: listener and mutex(d)()  # keeps the socket open until called


def directory_at_the_lock_path(d: Path) -> Callable[[], object]:
    (d / "toil-mutex-m").mkdir()
    return mutex(d)


def held(path: Path) -> int:
    """Lock path through a descriptor of our own: another acquisition has to wait."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def timeout(d: Path) -> Callable[[], object]:
    held(d / "toil-mutex-m")
    return mutex(d, timeout=0.05)


def busy_non_blocking_lock(d: Path) -> Callable[[], object]:
    held(d / "busy")
    return lambda: toil_threading.safe_lock(os.open(d / "busy", os.O_RDONLY), block=False)


def name_in_a_missing_directory(d: Path) -> Callable[[], object]:
    return lambda: toil_threading.get_process_name(d / "missing")


def members_directory_is_a_symlink(d: Path) -> Callable[[], object]:
    (d / "a-arena-members").symlink_to(d)
    return toil_threading.LastProcessStandingArena(d, "a").enter


def members_directory_is_a_file(d: Path) -> Callable[[], object]:
    (d / "a-arena-members").touch()
    return toil_threading.LastProcessStandingArena(d, "a").enter


def polling_a_fifo(d: Path) -> Callable[[], object]:
    os.mkfifo(d / "tmpfifoxxxx")
    return lambda: toil_threading.process_name_exists(d, "tmpfifoxxxx")


def bad_descriptors(d: Path) -> Callable[[], object]:
    return lambda: [
        outcome(lambda: toil_threading.safe_lock(987654)),
        outcome(lambda: toil_threading.safe_unlock_and_close(987654)),
        outcome(lambda: toil_threading.locked_file_is(987654, d)),
    ]


def missing_cgroup_file(d: Path) -> Callable[[], object]:
    return lambda: toil_threading.parse_quota_cgroups2(d / "cpu.max")


def malformed_cgroup_file(d: Path) -> Callable[[], object]:
    (d / "cpu.max").write_text("lots\n")
    return lambda: toil_threading.parse_quota_cgroups2(d / "cpu.max")


CASES: list[tuple[Case, str]] = [
    (missing_base_dir, "FileNotFoundError"),
    (base_dir_is_a_file, "NotADirectoryError"),
    (symlink_at_the_lock_path, "OSError"),
    (fifo_at_the_lock_path, "OSError"),
    (socket_at_the_lock_path, "OSError"),
    (directory_at_the_lock_path, "OSError"),
    (timeout, "LockTimeout"),
    (busy_non_blocking_lock, "BlockingIOError"),
    (name_in_a_missing_directory, "FileNotFoundError"),
    (members_directory_is_a_symlink, "OSError"),
    (members_directory_is_a_file, "NotADirectoryError"),
    (polling_a_fifo, "returned"),
    (bad_descriptors, "returned"),
    (missing_cgroup_file, "FileNotFoundError"),
    (malformed_cgroup_file, "ValueError"),
]


@pytest.mark.parametrize(("case", "expected"), CASES, ids=[case.__name__ for case, _ in CASES])
def test_the_cores_fail_alike(tmp_path: Path, case: Case, expected: str) -> None:
    found = {}
    for core in CORES:  # a fresh directory for each core, set up the same way
        directory = tmp_path / core
        directory.mkdir()
        found[core] = on_core(core, case(directory))
    assert_alike(with_dir_for_paths(found, tmp_path), expected)


FIRST_FAILURE = """
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import test_twins
if {core!r} == "compiled":  # the pure core imports the failure module with itself
    assert "toil_threading._retry" not in sys.modules, "loaded already: nothing is tested"
call = test_twins.{case}(Path({directory!r}))
print(json.dumps(test_twins.outcome(call)))
"""


@pytest.mark.parametrize(("case", "expected"), CASES, ids=[case.__name__ for case, _ in CASES])
def test_the_first_failure_of_a_fresh_process_is_told_alike(
    tmp_path: Path, case: Case, expected: str
) -> None:
    """The module that words failures loads on the first one, making system calls of its
    own: the errno reported must still be the failed call's."""
    found = {}
    for core in CORES:
        here, fresh = tmp_path / core / "here", tmp_path / core / "fresh"
        here.mkdir(parents=True)
        fresh.mkdir()
        code = FIRST_FAILURE.format(
            tests=str(Path(__file__).parent), core=core, case=case.__name__, directory=str(fresh)
        )
        child = python_with_core(core, code, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        in_fresh = json.loads(out)
        in_this = json.loads(json.dumps(on_core(core, case(here))))
        assert json.dumps(in_fresh).replace(str(fresh), "DIR") == json.dumps(in_this).replace(
            str(here), "DIR"
        ), f"{core}: the fresh process told {in_fresh}, this one {in_this}"
        found[core] = tuple(in_fresh)
    assert found[CORES[0]][0] == expected


def with_dir_for_paths(found: dict[str, tuple[object, ...]], root: Path) -> dict[str, Any]:
    """Outcomes with each core's own directory written as DIR, so they can be compared."""
    return {
        core: tuple(
            item.replace(str(root / core), "DIR") if isinstance(item, str) else item
            for item in result
        )
        for core, result in found.items()
    }


def test_another_users_directory_fails_alike(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root, to act as another user")
    tmp_path.chmod(0o755)

    calls = {
        "mutex": mutex(tmp_path),
        "name": lambda: toil_threading.get_process_name(tmp_path),
        "arena": toil_threading.LastProcessStandingArena(tmp_path, "a").enter,
    }

    def as_nobody() -> dict[str, dict[str, tuple[object, ...]]]:
        return {what: {core: on_core(core, call) for core in CORES} for what, call in calls.items()}

    for what, found in in_child(as_nobody, user=NOBODY).items():
        assert_alike(found, "PermissionError")
        assert found["compiled"][1] == errno.EACCES, what


FAULTED = """
import errno, json, os, sys, toil_threading, importlib
from toil_threading import _impl
toil_threading.set_lock_retry_policy(max_tries=2, backoff=0.001)
base = sys.argv[1]
results = {}
for core in ("toil_threading._core_c", "toil_threading._core_py"):
    _impl.use_core(importlib.import_module(core))
    try:
        with toil_threading.global_mutex(base, "m", timeout=5):
            result = ["returned"]
    except Exception as error:
        result = [type(error).__name__, getattr(error, "errno", None),
                  getattr(error, "filename", None), str(error)]
    results[core.rpartition("_")[2]] = result
print(json.dumps(results))
"""


@pytest.mark.parametrize(
    ("injected", "expected"),
    [
        ({"FAULT_FLOCK_ERRNO": str(errno.EIO)}, "OSError"),
        ({"FAULT_FLOCK_ERRNO": str(errno.ENOLCK)}, "OSError"),
        ({"FAULT_FLOCK_ERRNO": str(errno.ENOMEM)}, "OSError"),
        ({"FAULT_FLOCK_ERRNO": str(errno.EIO), "FAULT_FS_TYPE": "0x00c36400"}, "RuntimeError"),
    ],
    ids=["EIO until given up", "ENOLCK until given up", "an unlisted errno", "Ceph"],
)
def test_injected_failures_fail_alike(
    tmp_path: Path, faultlib: str, injected: dict[str, str], expected: str
) -> None:
    base = tmp_path / f"faulty-{uuid.uuid4().hex}"
    base.mkdir()
    env = {
        "LD_PRELOAD": faultlib,
        "FAULT_FLOCK_PATH": base.name,
        "FAULT_FLOCK_TIMES": "-1",
        **injected,
    }
    child = python_with_core(
        "compiled",
        f"import sys\nsys.argv[1:] = [{str(base)!r}]\n" + FAULTED,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    found = {core: tuple(result) for core, result in json.loads(out).items()}
    assert found.keys() == {"c", "py"}
    assert_alike({"compiled": found["c"], "pure": found["py"]}, expected)
