"""The public surface: exactly the documented names, each with its real type for type
checkers, and nothing else in dir(); a misspelt name is an error to mypy."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import skip_or_fail

import toil_threading


def test_all_is_sorted_and_each_name_once() -> None:
    # That it is exactly the documented API: tests/test_docs.py holds it to docs/api.md.
    assert sorted(set(toil_threading.__all__)) == toil_threading.__all__


def test_dir_shows_the_api_and_nothing_else_public() -> None:
    public = {name for name in dir(toil_threading) if not name.startswith("_")}
    assert public == set(toil_threading.__all__)


def test_every_public_name_resolves_and_a_misspelt_one_does_not() -> None:
    for name in toil_threading.__all__:
        assert getattr(toil_threading, name) is not None, name
    with pytest.raises(AttributeError, match="global_mutx"):
        toil_threading.global_mutx  # type: ignore[attr-defined]  # noqa: B018


# Every public name used as documented, each result held to its documented type: mypy
# --strict must accept it all.
CORRECT_USE = """
    import logging
    import threading
    from contextlib import AbstractContextManager
    from typing import Iterator

    import toil_threading as t

    accelerated: bool = t.ACCELERATED
    count: int = t.cpu_count()
    explained: t.CpuCount = t.explain_cpu_count()
    limits: list[t.CpuLimit] = explained.limits
    v1: tuple[int, int] = t.parse_quota_cgroups1("/sys/fs/cgroup/cpu")
    v2: tuple[int, int] = t.parse_quota_cgroups2("/sys/fs/cgroup/cpu.max")
    mutex: AbstractContextManager[None] = t.global_mutex("/tmp", "m", timeout=1.0)
    arena: t.LastProcessStandingArena = t.LastProcessStandingArena("/tmp", "pool")
    arena.enter(timeout=1.0)
    leaving: Iterator[bool] = arena.leave()
    name: str = t.get_process_name("/tmp")
    alive: bool = t.process_name_exists("/tmp", name)
    names: dict[str, str] = t.current_process_name_for
    names_lock: threading.Lock = t.current_process_name_lock
    t.destroy_all_process_names()
    t.collect_process_name_garbage()
    t.safe_lock(0, block=True, shared=False, timeout=None)
    t.safe_unlock_and_close(0)
    same: bool = t.locked_file_is(0, "/tmp/x")
    t.ensure_filesystem_lockable("/tmp", 30, "hint")
    report: t.FilesystemReport = t.filesystem_report("/tmp")
    strategy: str = report.strategy
    policy: t.LockRetryPolicy = t.lock_retry_policy()
    old: t.LockRetryPolicy = t.set_lock_retry_policy(max_tries=3, backoff=0.5)
    tries: int = policy.max_tries
    t.install_into_toil()
    log: logging.Logger = t.logger
    thread: t.ExceptionalThread = t.ExceptionalThread(target=print)
    try:
        pass
    except t.LockTimeout as timeout:
        path: str | None = timeout.path
        waited: float = timeout.waited
        holder: int | None = timeout.holder
        also: TimeoutError = timeout
"""

# Each must be refused: a misspelt name, and names whose real types forbid the use.
WRONG_USES = {
    "misspelt function": "m = t.global_mutx",
    "misspelt lazily loaded class": "k = t.LastProcessStandingArna",
    "misspelt attribute of the timeout": "t.LockTimeout(None, None, 0.0).holdr",
    "a count is no str": "x: str = t.cpu_count()",
    "a report is no dict": "y: dict[str, str] = t.filesystem_report('/tmp')",
    "a name is no int": "z: int = t.get_process_name('/tmp')",
    "ACCELERATED is a bool": "w: str = t.ACCELERATED",
}


def _mypy(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    try:
        import mypy  # noqa: F401
    except ImportError:
        skip_or_fail("mypy is not installed here (it comes with the README's test command)")
    snippet = tmp_path / "use.py"
    snippet.write_text(textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(snippet)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_mypy_accepts_every_public_name_used_as_documented(tmp_path: Path) -> None:
    checked = _mypy(tmp_path, CORRECT_USE)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_mypy_refuses_misspelt_names_and_wrong_types(tmp_path: Path) -> None:
    body = "import toil_threading as t\n" + "\n".join(WRONG_USES.values()) + "\n"
    checked = _mypy(tmp_path, body)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    lines_with_errors = {
        int(line.split(":")[1]) for line in checked.stdout.splitlines() if ": error:" in line
    }
    # One error on each wrong line (line 1 is the import).
    assert lines_with_errors == set(range(2, 2 + len(WRONG_USES))), checked.stdout
