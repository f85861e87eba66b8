"""The worker programs tests start as separate interpreters, and how to talk to them.

Each program runs on either core of this package (`start(program, ..., core=...)`) or,
unchanged, under Toil's own module (`start(program, ..., toil_python=...)`, which makes
`import toil_threading` give toil.lib.threading): the mutex, arena, command-line,
shared-filesystem and interoperation tests all use these same workers.  Arguments arrive
as strings in sys.argv; a worker that reports prints one JSON line last.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Iterable
from typing import Any

import pytest
from conftest import python_with_core, run_toil

# Longest wait for a worker to start, speak or finish where no timing is asserted.
PATIENCE = 60.0

# Takes the mutex "shared" ROUNDS times; inside, an exclusive create of the potato proves
# that nobody else is inside.  With GO, it first waits for a line on stdin, so that all
# the workers of a test start together.  Every exception is counted where it happened,
# never raised, so one report shows all of them.  With TIMEOUT, each wait is given that
# many seconds (a wait that runs out is counted as an exception, by type).
#   HAMMER BASE_DIR ROUNDS [GO|-] [TIMEOUT]
HAMMER = r"""
import errno, json, os, sys, time, traceback, toil_threading
base_dir, rounds = sys.argv[1], int(sys.argv[2])
wait = {"timeout": float(sys.argv[4])} if sys.argv[4:] else {}
potato = os.path.join(base_dir, "potato")
violations = acquired = 0
exceptions, first = {}, {}

def note(where, error):
    code = getattr(error, "errno", None)
    key = f"{where}: {type(error).__name__}"
    if code:
        key += f" {errno.errorcode.get(code, code)}"
    exceptions[key] = exceptions.get(key, 0) + 1
    if key not in first:
        frames = traceback.extract_tb(error.__traceback__)[-3:]
        places = " > ".join(f"{f.name} ({os.path.basename(f.filename)}:{f.lineno})" for f in frames)
        first[key] = f"{error}; raised in {places}"

if sys.argv[3:4] == ["GO"]:
    print("ready", flush=True)
    sys.stdin.readline()
started = time.perf_counter()
for _ in range(rounds):
    hold = toil_threading.global_mutex(base_dir, "shared", **wait)
    try:
        hold.__enter__()
    except Exception as error:
        note("acquire", error)
        continue
    acquired += 1
    try:
        try:
            fd = os.open(potato, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            violations += 1
        else:
            os.close(fd)
            os.sched_yield()
            os.unlink(potato)
    except Exception as error:
        note("inside", error)
    finally:
        try:
            hold.__exit__(None, None, None)
        except Exception as error:
            note("release", error)
print(json.dumps({"acquired": acquired, "violations": violations, "exceptions": exceptions,
                  "first": first, "seconds": time.perf_counter() - started}), flush=True)
"""

# Takes the mutex "shared" again and again for SECONDS, while the test SIGKILLs workers at
# random (some while they hold it).  Inside, it writes its PID into BASE_DIR/occupant and
# checks that nobody else is there: a PID found there that is alive means two holders at
# once (a violation); a dead one's PID is what a holder killed inside leaves behind.
#   CHAOS BASE_DIR SECONDS
CHAOS = r"""
import json, os, sys, time, toil_threading
base_dir, seconds = sys.argv[1], float(sys.argv[2])
occupant = os.path.join(base_dir, "occupant")
me = os.getpid()
violations = acquired = 0
seen = []

def alive(pid):
    # A process killed inside lets go of its locks as it exits (PF_EXITING, 0x4, is set
    # first), before it is a zombie: from then on it is no longer inside.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return False
    return fields[0] not in ("Z", "X") and not int(fields[6]) & 0x4

print("ready", flush=True)
stop = time.monotonic() + seconds
while time.monotonic() < stop:
    with toil_threading.global_mutex(base_dir, "shared"):
        acquired += 1
        fd = os.open(occupant, os.O_RDWR | os.O_CREAT)
        try:
            there = os.pread(fd, 16, 0).strip()
            if there and int(there) != me and alive(int(there)):
                violations += 1
                seen.append(f"{int(there)} inside as {me} came in")
            os.pwrite(fd, b"%15d\n" % me, 0)
            os.sched_yield()
            if int(os.pread(fd, 16, 0)) != me:
                violations += 1
                seen.append(f"{int(os.pread(fd, 16, 0))} came in while {me} was inside")
            os.pwrite(fd, b" " * 16, 0)
        finally:
            os.close(fd)
print(json.dumps({"acquired": acquired, "violations": violations, "seen": seen}), flush=True)
"""

# Holds the mutex MUTEX, says "held", and lets go when a line (or the end) comes on stdin.
#   MUTEX_HOLDER BASE_DIR MUTEX
MUTEX_HOLDER = r"""
import sys, toil_threading
with toil_threading.global_mutex(sys.argv[1], sys.argv[2]):
    print("held", flush=True)
    sys.stdin.readline()
"""

# Toil's arena scenario: enter the arena "pool", leave a file of its own in BASE_DIR/stuff,
# check it is untouched, leave; the last one out removes everyone's files.  ROUNDS times,
# pausing a few milliseconds inside; or, with WAIT, once, saying "entered" and staying
# inside until a line comes on stdin.  Reports how many cleanups it ran and whether its
# files were intact.
#   ARENA_MEMBER BASE_DIR TAG ROUNDS [WAIT]
ARENA_MEMBER = r"""
import json, os, random, sys, time, toil_threading
base_dir, tag, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
waiting = sys.argv[4:] == ["WAIT"]
stuff = os.path.join(base_dir, "stuff")
cleanups, intact = 0, True
for task in range(rounds):
    arena = toil_threading.LastProcessStandingArena(base_dir, "pool")
    arena.enter()
    os.makedirs(stuff, exist_ok=True)
    mine = os.path.join(stuff, f"{tag}-{task}")
    with open(mine, "w") as handle:
        handle.write(tag)
    if waiting:
        print("entered", flush=True)
        sys.stdin.readline()
    else:
        time.sleep(random.uniform(0.001, 0.005))
    with open(mine) as handle:
        intact = intact and handle.read() == tag
    for _ in arena.leave():
        cleanups += 1
        for name in os.listdir(stuff):
            os.unlink(os.path.join(stuff, name))
print(json.dumps({"tag": tag, "cleanups": cleanups, "intact": intact}), flush=True)
"""

# Prints its process name in BASE_DIR and lives until a line (or the end) comes on stdin.
#   NAME_OWNER BASE_DIR
NAME_OWNER = r"""
import sys, toil_threading
print(toil_threading.get_process_name(sys.argv[1]), flush=True)
sys.stdin.readline()
"""

# One of each kind of lock file in BASE_DIR: holds the mutex MUTEX, is a member of the
# arena "pool" and has a process name; prints the member's and the name's file names, and
# lets go when a line (or the end) comes on stdin.
#   EVERY_KIND BASE_DIR MUTEX
EVERY_KIND = r"""
import sys, toil_threading
with toil_threading.global_mutex(sys.argv[1], sys.argv[2]):
    arena = toil_threading.LastProcessStandingArena(sys.argv[1], "pool")
    arena.enter()
    print(arena.lockfileName, toil_threading.get_process_name(sys.argv[1]), flush=True)
    sys.stdin.readline()
"""


def start(
    program: str,
    *args: object,
    core: str | None = None,
    toil_python: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Start program with args, on core (this package) or toil_python (Toil's module)."""
    code = f"import sys\nsys.argv[1:] = {[str(arg) for arg in args]!r}\n" + program
    pipes: dict[str, Any] = {
        "stdin": subprocess.PIPE,
        "stdout": subprocess.PIPE,
        "stderr": subprocess.PIPE,
    }
    if toil_python is not None:
        return run_toil(toil_python, code, **pipes)
    assert core is not None, "start() needs a core or toil_python"
    return python_with_core(core, code, env=env, **pipes)


def next_line(proc: subprocess.Popen[str], timeout: float = PATIENCE) -> str | None:
    """The worker's next stdout line (without its newline); None if it said nothing more
    in timeout seconds or ended.

    Read a byte at a time from the pipe itself: nothing is left in a buffer that a later
    communicate() (which reads the pipe) would miss.
    """
    assert proc.stdout is not None
    line = b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([proc.stdout], [], [], max(deadline - time.monotonic(), 0))
        chunk = os.read(proc.stdout.fileno(), 1) if ready else b""
        if not chunk:
            return None
        line += chunk
    return line.decode().rstrip("\n")


def expect_line(proc: subprocess.Popen[str], want: str, timeout: float = PATIENCE) -> None:
    """Wait for the worker's next line and check it; on failure show its stderr."""
    line = next_line(proc, timeout)
    if line != want:
        proc.kill()
        _, stderr = proc.communicate()
        pytest.fail(
            f"worker printed {line!r} instead of {want!r} (exit {proc.returncode}):\n{stderr}"
        )


def said(proc: subprocess.Popen[str], timeout: float = PATIENCE) -> str:
    """The worker's next line, which it must say."""
    line = next_line(proc, timeout)
    if line is None:
        proc.kill()
        pytest.fail(f"the worker said nothing (exit {proc.wait()}):\n{proc.communicate()[1]}")
    return line


def say(proc: subprocess.Popen[str], line: str = "go") -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def finish(
    proc: subprocess.Popen[str], stdin: str | None = None, timeout: float = PATIENCE
) -> tuple[str, str]:
    """Let the worker end (after sending stdin); returns its stdout and stderr."""
    try:
        return proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"worker did not end within {timeout} s:\n{out}\n{err}")


def report(proc: subprocess.Popen[str], stdin: str | None = None) -> dict[str, Any]:
    """The JSON line a worker printed last, once it ended well."""
    out, err = finish(proc, stdin)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def kill_all(workers: Iterable[subprocess.Popen[str]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.kill()
        worker.communicate()


def run_together(workers: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    """Wait until every worker is ready, let them all go at once, and return their reports;
    whatever happens, none is left running."""
    try:
        for worker in workers:
            expect_line(worker, "ready")
        for worker in workers:
            say(worker)
        return [report(worker) for worker in workers]
    finally:
        kill_all(workers)
