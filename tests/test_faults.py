"""flock failures injected into real processes: the EIO/ENOLCK retry policy, EINTR, Ctrl-C.

A small LD_PRELOAD library (faultinject.c, built once per session) makes libc's flock
fail with a chosen errno on files whose path holds a marker, a given number of times or
forever.  Both cores call that same libc flock (the compiled one directly, the pure one
through the fcntl module), so each test runs a child interpreter on either core and
checks what it raised, what it logged and, from the parent, whether it holds the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import assert_locked_elsewhere, python_with_core
from workers import PATIENCE, expect_line, finish

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="LD_PRELOAD fault injection needs Linux"
)

PIPE = subprocess.PIPE

LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL):toil_threading:(.*)$", re.MULTILINE)

# Every child logs everything to stderr in basicConfig's "LEVEL:logger:message" format,
# checks that the retry policy of the environment reached the core it runs on, and
# turns SIGINT into KeyboardInterrupt even if this pytest was started with it ignored.
CHILD_HEAD = """
import errno, logging, os, signal, sys, time
logging.basicConfig(level=logging.DEBUG)
signal.signal(signal.SIGINT, signal.default_int_handler)
_policy = toil_threading.lock_retry_policy()
assert _policy.backoff == float(os.environ["TOIL_THREADING_LOCK_BACKOFF"]), _policy
if os.environ["TOIL_THREADING_LOCK_MAX_TRIES"]:
    assert _policy.max_tries == int(os.environ["TOIL_THREADING_LOCK_MAX_TRIES"]), _policy
if os.environ["TOIL_THREADING_LOCK_MAX_BACKOFF"]:
    assert _policy.max_backoff == float(os.environ["TOIL_THREADING_LOCK_MAX_BACKOFF"]), _policy
"""


@pytest.fixture
def marker() -> str:
    """A string that only this test's target files have in their path."""
    return f"faulty-{uuid.uuid4().hex}"


def fault_env(lib: str, marker: str, err: int, times: int, **policy: str) -> dict[str, str]:
    """Environment for a child whose flock on files named with marker fails times times."""
    env = {
        "LD_PRELOAD": lib,
        "FAULT_FLOCK_PATH": marker,
        "FAULT_FLOCK_ERRNO": str(err),
        "FAULT_FLOCK_TIMES": str(times),
        # Empty values are ignored by the facade: the package defaults, whatever the
        # environment running the tests says.
        "TOIL_THREADING_LOCK_MAX_TRIES": "",
        "TOIL_THREADING_LOCK_BACKOFF": "0.01",
        "TOIL_THREADING_LOCK_MAX_BACKOFF": "",
    }
    env.update({f"TOIL_THREADING_LOCK_{name.upper()}": value for name, value in policy.items()})
    return env


@contextlib.contextmanager
def spawn(core: str, code: str, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """Run code (after CHILD_HEAD) in a child on core; it is killed and reaped on the way out."""
    proc = python_with_core(core, CHILD_HEAD + code, env=env, stdin=PIPE, stdout=PIPE, stderr=PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None and not stream.closed:
                with contextlib.suppress(OSError):
                    stream.close()


def logged(stderr: str, level: str) -> list[str]:
    """Messages the child logged through the toil_threading logger at level."""
    return [message for lvl, message in LOG_LINE.findall(stderr) if lvl == level]


def assert_unlocked(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def open_target(tmp_path: Path, marker: str) -> Path:
    path = tmp_path / f"{marker}.lock"
    path.touch()
    return path


# Takes the lock, says so, holds it until a line comes on stdin, then releases it.
LOCK_AND_HOLD = """
fd = os.open({path!r}, os.O_RDWR)
started = time.monotonic()
toil_threading.safe_lock(fd)
print("locked", flush=True)
sys.stdin.readline()
toil_threading.safe_unlock_and_close(fd)
print("released after", time.monotonic() - started, flush=True)
"""

# Tries the lock once and reports how it ended.
LOCK_ONCE = """
fd = os.open({path!r}, os.O_RDWR)
started = time.monotonic()
try:
    toil_threading.safe_lock(fd{args})
except TimeoutError as error:
    print("timeout", time.monotonic() - started, flush=True)
except OSError as error:
    print("errno", error.errno, time.monotonic() - started, flush=True)
else:
    print("locked", time.monotonic() - started, flush=True)
"""


def run_lock_once(
    core: str, env: dict[str, str], path: Path, args: str = "", timeout: float = PATIENCE
) -> tuple[str, float, str]:
    """Run LOCK_ONCE; returns (outcome, seconds the call took, stderr)."""
    with spawn(core, LOCK_ONCE.format(path=str(path), args=args), env) as proc:
        out, err = finish(proc, timeout=timeout)
    assert proc.returncode == 0, err
    words = out.split()
    assert words and words[0] in ("timeout", "errno", "locked"), (out, err)
    outcome = " ".join(words[:-1])
    return outcome, float(words[-1]), err


def test_shim_leaves_other_files_alone(
    core: str, faultlib: str, marker: str, tmp_path: Path
) -> None:
    # The marker is not in this file's path: EIO forever must not reach it.
    path = open_target(tmp_path, "innocent")
    env = fault_env(faultlib, marker, errno.EIO, -1, backoff="5")
    outcome, _, err = run_lock_once(core, env, path)
    assert outcome == "locked", err
    assert logged(err, "ERROR") == [] and logged(err, "CRITICAL") == []


def test_eio_three_times_then_lock_is_held(
    core: str, faultlib: str, marker: str, tmp_path: Path
) -> None:
    path = open_target(tmp_path, marker)
    env = fault_env(faultlib, marker, errno.EIO, 3)
    with spawn(core, LOCK_AND_HOLD.format(path=str(path)), env) as proc:
        expect_line(proc, "locked")
        assert_locked_elsewhere(path)
        out, err = finish(proc, "\n")
    assert proc.returncode == 0, err
    assert out.startswith("released after"), (out, err)
    assert_unlocked(path)
    errors = logged(err, "ERROR")
    assert len(errors) == 3, err
    assert all("Input/output error" in message for message in errors), errors
    assert [re.search(r"try (\d+) of 10", m).group(1) for m in errors] == ["1", "2", "3"], errors
    assert logged(err, "CRITICAL") == [], err


@pytest.mark.parametrize(
    "err,max_tries,cause",
    [(errno.ENOLCK, 4, ("lockd", "NFS")), (errno.EIO, 3, ("Ceph",))],
    ids=["ENOLCK-names-NFS-lockd", "EIO-names-Ceph"],
)
def test_gives_up_naming_the_likely_cause(
    core: str,
    faultlib: str,
    marker: str,
    tmp_path: Path,
    err: int,
    max_tries: int,
    cause: tuple[str, ...],
) -> None:
    path = open_target(tmp_path, marker)
    env = fault_env(faultlib, marker, err, -1, max_tries=str(max_tries))
    outcome, _, stderr = run_lock_once(core, env, path)
    assert outcome == f"errno {err}", stderr
    assert len(logged(stderr, "ERROR")) == max_tries - 1, stderr
    critical = logged(stderr, "CRITICAL")
    assert len(critical) == 1, stderr
    assert f"after {max_tries} tries" in critical[0], critical
    assert all(word in critical[0] for word in cause), critical


def test_backoff_doubles_and_is_capped(
    core: str, faultlib: str, marker: str, tmp_path: Path
) -> None:
    path = open_target(tmp_path, marker)
    env = fault_env(faultlib, marker, errno.EIO, 4, backoff="0.05", max_backoff="0.1")
    outcome, elapsed, err = run_lock_once(core, env, path)
    assert outcome == "locked", err
    pauses = [float(re.search(r"retrying in (\S+) s", m).group(1)) for m in logged(err, "ERROR")]
    assert pauses == [0.05, 0.1, 0.1, 0.1], err
    # The sleeps themselves: never shorter than asked (1 ms for rounding), sanely bounded.
    assert 0.05 + 0.1 + 0.1 + 0.1 - 0.001 <= elapsed < 5, elapsed
    assert logged(err, "CRITICAL") == [], err


def test_eintr_is_retried_silently(core: str, faultlib: str, marker: str, tmp_path: Path) -> None:
    path = open_target(tmp_path, marker)
    # A back-off this long would show if EINTR were mistaken for EIO/ENOLCK.
    env = fault_env(faultlib, marker, errno.EINTR, 50, backoff="5")
    with spawn(core, LOCK_AND_HOLD.format(path=str(path)), env) as proc:
        expect_line(proc, "locked")
        assert_locked_elsewhere(path)
        out, err = finish(proc, "\n")
    assert proc.returncode == 0, err
    assert out.startswith("released after"), (out, err)
    assert "Traceback" not in err, err
    assert logged(err, "ERROR") == [] and logged(err, "CRITICAL") == [], err


def test_unlisted_errno_raised_at_once(
    core: str, faultlib: str, marker: str, tmp_path: Path
) -> None:
    path = open_target(tmp_path, marker)
    # One failure only: had the core retried, the retry would have got the lock.  The
    # second call proves just that one failure was used.
    env = fault_env(faultlib, marker, errno.ENOMEM, 1, backoff="2")
    code = LOCK_ONCE.format(path=str(path), args="") + (
        "toil_threading.safe_lock(fd)\nprint('second locked', flush=True)\n"
    )
    with spawn(core, code, env) as proc:
        out, err = finish(proc)
    assert proc.returncode == 0, err
    first, second = out.splitlines()
    outcome, elapsed = first.rsplit(" ", 1)
    assert outcome == f"errno {errno.ENOMEM}", err
    assert float(elapsed) < 1.0, "ENOMEM was not raised at once (under the 2 s back-off)"
    assert second == "second locked", err
    assert logged(err, "ERROR") == [] and logged(err, "CRITICAL") == [], err


def test_global_mutex_survives_eio(core: str, faultlib: str, marker: str, tmp_path: Path) -> None:
    base = tmp_path / marker
    base.mkdir()
    mutex_file = base / "toil-mutex-job"
    env = fault_env(faultlib, marker, errno.EIO, 2)
    code = f"""
with toil_threading.global_mutex({str(base)!r}, "job"):
    print("locked", flush=True)
    sys.stdin.readline()
print("released", os.path.exists({str(mutex_file)!r}), flush=True)
"""
    with spawn(core, code, env) as proc:
        expect_line(proc, "locked")
        assert_locked_elsewhere(mutex_file)
        out, err = finish(proc, "\n")
    assert proc.returncode == 0, err
    assert out.strip() == "released False", (out, err)
    assert not mutex_file.exists()
    assert len(logged(err, "ERROR")) == 2, err
    assert logged(err, "CRITICAL") == [], err


def test_ctrl_c_during_backoff(core: str, faultlib: str, marker: str, tmp_path: Path) -> None:
    path = open_target(tmp_path, marker)
    env = fault_env(faultlib, marker, errno.EIO, -1, backoff="30")
    code = f"""
fd = os.open({str(path)!r}, os.O_RDWR)
try:
    print("waiting", flush=True)
    toil_threading.safe_lock(fd)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(3)
print("locked", flush=True)
"""
    with spawn(core, code, env) as proc:
        expect_line(proc, "waiting")
        time.sleep(0.3)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pytest.fail("SIGINT did not end the back-off sleep within 5 s")
        reaction = time.monotonic() - signalled
        out, err = finish(proc)
    assert proc.returncode == 3, (out, err)
    assert out.strip() == "interrupted", (out, err)
    assert reaction < 1.0, reaction
    # It was in the first back-off pause: one retry announced, no giving up.
    assert len(logged(err, "ERROR")) == 1, err
    assert logged(err, "CRITICAL") == [], err


def test_timeout_cuts_backoff_short(core: str, faultlib: str, marker: str, tmp_path: Path) -> None:
    path = open_target(tmp_path, marker)
    env = fault_env(faultlib, marker, errno.EIO, -1, backoff="10")
    outcome, elapsed, err = run_lock_once(core, env, path, args=", timeout=0.3", timeout=10)
    assert outcome == "timeout", err
    assert 0.25 <= elapsed < 2, elapsed
    assert logged(err, "CRITICAL") == [], err


def test_ceph_is_refused_before_any_lock(
    core: str, faultlib: str, marker: str, tmp_path: Path
) -> None:
    # statfs/fstatfs report Ceph's magic for this directory: both the check alone and
    # every global_mutex acquisition refuse, and flock is never called there.
    base = tmp_path / marker
    base.mkdir()
    env = fault_env(faultlib, marker, errno.EIO, -1)  # any flock on it would fail loudly
    env["FAULT_FS_TYPE"] = "0x00c36400"
    code = f"""
for attempt in (
    lambda: toil_threading.ensure_filesystem_lockable({str(base)!r}, hint="try /scratch"),
    lambda: toil_threading.global_mutex({str(base)!r}, "job").__enter__(),
):
    try:
        attempt()
        print("allowed")
    except RuntimeError as error:
        hinted = "try /scratch" in str(error) or "Use a directory" in str(error)
        print("refused", "Ceph" in str(error), hinted)
print(sorted(os.listdir({str(base)!r})), len(os.listdir("/proc/self/fd")) < 64)
"""
    with spawn(core, code, env) as proc:
        out, err = finish(proc)
    assert proc.returncode == 0, err
    assert out.splitlines()[:2] == ["refused True True", "refused True True"], (out, err)
    assert logged(err, "ERROR") == [], "flock was attempted on Ceph"
    # An empty mutex file may be left (the check runs on the opened file), never locked.
    assert out.splitlines()[2] in ("[] True", "['toil-mutex-job'] True")


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOLCK])
def test_unlock_failing_still_closes(
    core: str, faultlib: str, marker: str, tmp_path: Path, err: int
) -> None:
    # Toil's own tests check this with mocks, which only the pure core can see.
    path = open_target(tmp_path, marker)
    env = fault_env(faultlib, marker, err, -1)
    env["FAULT_FLOCK_UNLOCK"] = "1"
    code = f"""
fd = os.open({str(path)!r}, os.O_RDWR)
toil_threading.safe_unlock_and_close(fd)
try:
    os.fstat(fd)
    print("still open", flush=True)
except OSError as error:
    print("closed" if error.errno == errno.EBADF else error, flush=True)
"""
    with spawn(core, code, env) as proc:
        out, err_text = finish(proc)
    assert proc.returncode == 0, err_text
    assert out.strip() == "closed"
