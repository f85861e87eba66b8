"""Ctrl-C at any moment: an interrupted call leaves nothing held that nobody can release.

A KeyboardInterrupt may strike at any line the package runs.  Afterwards the process either
holds (through an object the caller has: released by its __exit__, leave() or garbage
collection) or does not hold: never a lock that nobody can release, never a leaked
descriptor, never an error printed from a finalizer.

Two ways in: every line of a call in turn (a tracer raises KeyboardInterrupt at the N-th
line the package executes, for N = 1, 2, ... until the call completes untouched), and a
storm of real SIGINTs sent to a process looping over the same calls.  Both run on both
cores; on the compiled one only the package's Python modules have lines to strike.
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import IO, Any

import pytest
from children import in_child
from conftest import linux_only, python_with_core
from workers import next_line

import toil_threading

pytestmark = linux_only

PACKAGE_DIR = os.path.dirname(os.path.abspath(toil_threading.__file__)) + os.sep
# Lines of one call (the longest, arena enter on the pure core, has a few hundred): more
# means the call never completes, whatever the injection.
MOST_LINES = 5000

TraceFunction = Callable[[FrameType, str, Any], Any]


class Injection:
    """Raises KeyboardInterrupt at the at-th line the package executes (from 1; 0: never)
    while entered; where says which line it was, lines how many were counted."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.lines = 0
        self.where: str | None = None

    def __enter__(self) -> Injection:
        sys.settrace(self._call)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(None)

    def _call(self, frame: FrameType, event: str, arg: Any) -> TraceFunction | None:
        """The global tracer: line events only in the package's own frames."""
        if not frame.f_code.co_filename.startswith(PACKAGE_DIR):
            return None
        frame.f_trace_lines = True
        frame.f_trace = self._line
        return self._line

    def _line(self, frame: FrameType, event: str, arg: Any) -> TraceFunction | None:
        if event == "line":
            self.lines += 1
            if self.lines == self.at:
                code = frame.f_code
                self.where = (
                    f"{os.path.relpath(code.co_filename, PACKAGE_DIR)}:{frame.f_lineno}"
                    f" in {code.co_name}"
                )
                # Raising from a tracer also stops tracing: one interrupt per call.
                raise KeyboardInterrupt(f"injected at {self.where}")
        return self._line


# The other process, asked whether a mutex is free and which names live (on the same core):
# one JSON line answers each request line, ["mutex", DIR, NAME] or ["alive", DIR, ""].
CHECKER = r"""
import json, os, sys, toil_threading
for line in sys.stdin:
    kind, directory, name = json.loads(line)
    try:
        if kind == "mutex":
            try:
                with toil_threading.global_mutex(directory, name, timeout=0):
                    answer = "free"
            except TimeoutError:
                answer = "held"
        else:
            answer = sorted(
                entry
                for entry in (os.listdir(directory) if os.path.isdir(directory) else ())
                if entry.startswith("tmp") and toil_threading.process_name_exists(directory, entry)
            )
    except Exception as error:
        answer = f"{type(error).__name__}: {error}"
    print(json.dumps(answer), flush=True)
"""


class Checker:
    """Another process, to see what this one's locks look like from outside."""

    def __init__(self, core: str) -> None:
        self.process = python_with_core(
            core,
            CHECKER,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def _ask(self, kind: str, directory: Path, name: str = "") -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps([kind, str(directory), name]) + "\n")
        self.process.stdin.flush()
        line = next_line(self.process, 30)
        assert line is not None, "the checking process did not answer"
        return json.loads(line)

    def mutex(self, directory: Path, name: str) -> str:
        """Whether the other process takes the mutex at once: "free", else "held"."""
        answer: str = self._ask("mutex", directory, name)
        return answer

    def alive(self, directory: Path) -> list[str] | str:
        """The names in directory that the other process sees alive (or an error)."""
        answer: list[str] | str = self._ask("alive", directory)
        return answer

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def registered(base: Path) -> str | None:
    """The name this process has in base, by Toil's public table."""
    return toil_threading.current_process_name_for.get(str(base))


def descriptors() -> dict[int, str]:
    """This process's open descriptors and what each is open on.

    The one that lists /proc/self/fd is closed by the time it would be read, so it is left
    out: a descriptor opened later with its number is not mistaken for it.
    """
    found = {}
    for entry in os.listdir("/proc/self/fd"):
        with suppress(OSError):
            found[int(entry)] = os.readlink(f"/proc/self/fd/{entry}")
    return found


def new_descriptors(before: dict[int, str]) -> dict[int, str]:
    """Descriptors open now that were not before (or were, on something else)."""
    return {fd: path for fd, path in descriptors().items() if before.get(fd) != path}


def close_all(descriptors: dict[int, str]) -> None:
    for fd in descriptors:
        with suppress(OSError):
            os.close(fd)


class Operation:
    """One package call to interrupt, the objects its caller has, and the caller's part."""

    def __init__(self, directory: Path, checker: Checker) -> None:
        self.directory = directory
        self.checker = checker

    def prepare(self) -> None:
        """What comes before the call, never interrupted."""

    def call(self) -> None:
        raise NotImplementedError

    def settle(self, completed: bool, problems: list[str]) -> None:
        """Check what the call left, then clean up as a caller would with what it has."""

    def drop(self) -> None:
        """Let go of every object the caller had."""

    def verify(self, problems: list[str]) -> None:
        """What others see once the caller is done."""

    def expect_free(self, mutex: str, problems: list[str]) -> bool:
        answer = self.checker.mutex(self.directory, mutex)
        if answer != "free":
            problems.append(f"another process cannot take the mutex {mutex!r} ({answer})")
        return answer == "free"

    def expect_alive(self, base: Path, want: list[str], problems: list[str], when: str) -> None:
        alive = self.checker.alive(base)
        if alive != want:
            problems.append(f"{when}: names alive in {base.name}: {alive}, expected {want}")


class MutexRoundTrip(Operation):
    """`with global_mutex(...)`: the with statement is all the caller has."""

    def prepare(self) -> None:
        # A fresh name each time: every run goes through the same lines.
        self.mutex = f"m{self.directory.name}"

    def call(self) -> None:
        with toil_threading.global_mutex(self.directory, self.mutex):
            pass

    def verify(self, problems: list[str]) -> None:
        self.expect_free(self.mutex, problems)


class ArenaEnter(Operation):
    """arena.enter(); the caller leaves if arena.lockfileFD says it is a member."""

    arena: toil_threading.LastProcessStandingArena | None

    def prepare(self) -> None:
        self.arena = toil_threading.LastProcessStandingArena(self.directory, "pool")

    def call(self) -> None:
        assert self.arena is not None
        self.arena.enter()

    def check_call(self, completed: bool, problems: list[str]) -> None:
        assert self.arena is not None
        if completed and self.arena.lockfileFD is None:
            problems.append("enter() returned, but lockfileFD is None")

    def settle(self, completed: bool, problems: list[str]) -> None:
        assert self.arena is not None
        self.check_call(completed, problems)
        if (self.arena.lockfileFD is None) != (self.arena.lockfileName is None):
            problems.append(
                f"lockfileFD {self.arena.lockfileFD} but lockfileName {self.arena.lockfileName}"
            )
        if self.arena.lockfileFD is None:
            return
        # Leaving waits for the arena's mutex: held by a lost descriptor, it would hang.
        if not self.expect_free("pool-arena-lock", problems):
            return
        told = sum(1 for _ in self.arena.leave())
        if told != 1:
            problems.append(f"the caller's leave() yielded {told} times, the only member")
        if self.arena.lockfileFD is not None:
            problems.append("still a member after the caller's leave()")

    def drop(self) -> None:
        self.arena = None

    def verify(self, problems: list[str]) -> None:
        if not self.expect_free("pool-arena-lock", problems):
            return
        fresh = toil_threading.LastProcessStandingArena(self.directory, "pool")
        try:
            fresh.enter(timeout=5)
            told = sum(1 for _ in fresh.leave())
        except Exception as error:
            problems.append(f"a fresh arena could not enter and leave: {error!r}")
            return
        if told != 1:
            problems.append(f"a fresh arena's leave() yielded {told} times: not the last")
        members = self.directory / "pool-arena-members"
        if members.exists():
            problems.append(f"the members directory is left: {sorted(os.listdir(members))}")


class ArenaLeave(ArenaEnter):
    """`for _ in arena.leave()` by the only member (entered without interruption)."""

    def prepare(self) -> None:
        super().prepare()
        assert self.arena is not None
        self.arena.enter()
        self.told = -1

    def call(self) -> None:
        assert self.arena is not None
        self.told = sum(1 for _ in self.arena.leave())

    def check_call(self, completed: bool, problems: list[str]) -> None:
        assert self.arena is not None
        if completed and (self.told != 1 or self.arena.lockfileFD is not None):
            problems.append(
                f"leave() yielded {self.told} times; lockfileFD after it: {self.arena.lockfileFD}"
            )


class GetProcessName(Operation):
    """get_process_name: a name alive from outside, the caller's own, or none at all."""

    def prepare(self) -> None:
        self.name: str | None = None

    def call(self) -> None:
        self.name = toil_threading.get_process_name(self.directory)

    def settle(self, completed: bool, problems: list[str]) -> None:
        if completed:
            if registered(self.directory) != self.name:
                problems.append(
                    f"returned {self.name}, but the table says {registered(self.directory)}"
                )
            self.expect_alive(self.directory, [str(self.name)], problems, "after the call")
        else:
            # A later call works, and the one name alive is the one it gives.
            later = toil_threading.get_process_name(self.directory)
            self.expect_alive(self.directory, [later], problems, "after a later call")
        toil_threading.destroy_all_process_names()

    def verify(self, problems: list[str]) -> None:
        self.expect_alive(self.directory, [], problems, "after destroy_all_process_names")


class DestroyNames(Operation):
    """destroy_all_process_names with two names; the caller (or atexit) calls it again."""

    def prepare(self) -> None:
        self.bases = [self.directory / "a", self.directory / "b"]
        for base in self.bases:
            base.mkdir()
            toil_threading.get_process_name(base)

    def call(self) -> None:
        toil_threading.destroy_all_process_names()

    def settle(self, completed: bool, problems: list[str]) -> None:
        for base in self.bases:
            if completed and registered(base) is not None:
                problems.append(f"{base.name}: {registered(base)} is still in the table")
            # A name still alive must be one this process still has: asked again for its
            # name there, it gives that one (not a new one beside an orphan).
            alive = self.checker.alive(base)
            mine = toil_threading.get_process_name(base)
            if not (isinstance(alive, list) and set(alive) <= {mine}):
                problems.append(f"{base.name}: alive after the call {alive}, but ours is {mine}")
            self.expect_alive(base, [mine], problems, "after asking for our name again")
        toil_threading.destroy_all_process_names()

    def verify(self, problems: list[str]) -> None:
        for base in self.bases:
            self.expect_alive(base, [], problems, "after the caller's retry")
            if registered(base) is not None:
                problems.append(f"{base.name}: still in the table after the caller's retry")


class ProbeDeadName(Operation):
    """process_name_exists on the name of a dead process (its file, unlocked)."""

    NAME = "tmpdead0001"

    def prepare(self) -> None:
        (self.directory / self.NAME).touch()
        self.answer: bool | None = None

    def call(self) -> None:
        self.answer = toil_threading.process_name_exists(self.directory, self.NAME)

    def settle(self, completed: bool, problems: list[str]) -> None:
        if completed and self.answer is not False:
            problems.append(f"process_name_exists said {self.answer} of a dead name")

    def verify(self, problems: list[str]) -> None:
        self.expect_alive(self.directory, [], problems, "after the call")
        if toil_threading.process_name_exists(self.directory, self.NAME):
            problems.append("a later process_name_exists says the dead name lives")


OPERATIONS: dict[str, type[Operation]] = {
    "global_mutex round trip": MutexRoundTrip,
    "arena enter": ArenaEnter,
    "arena leave": ArenaLeave,
    "get_process_name": GetProcessName,
    "destroy_all_process_names": DestroyNames,
    "process_name_exists on a dead name": ProbeDeadName,
}


@contextmanager
def stderr_captured() -> Iterator[Callable[[], str]]:
    """Descriptor 2 into a file while entered; yields what was written since the last ask."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        seen = 0

        def written() -> str:
            nonlocal seen
            sys.stderr.flush()
            size = os.fstat(capture.fileno()).st_size
            text = os.pread(capture.fileno(), size - seen, seen).decode(errors="replace")
            seen = size
            return text

        try:
            yield written
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def interrupted_at(
    make: type[Operation], directory: Path, checker: Checker, at: int, said: Callable[[], str]
) -> tuple[str | None, list[str]]:
    """Run one call interrupted at its at-th line (0: never) and all a caller does after.

    Returns where it was interrupted (None: it completed untouched) and what went wrong.
    """
    directory.mkdir()
    unraisable: list[str] = []
    sys.unraisablehook = lambda hook: unraisable.append(
        f"{hook.exc_type.__name__}: {hook.exc_value} ({hook.err_msg} {hook.object!r})"
    )
    problems: list[str] = []
    gc.collect()
    before = descriptors()  # before the preparation too: what it opens, the caller closes
    operation = make(directory, checker)
    operation.prepare()
    injection = Injection(at)
    completed = False
    try:
        with injection:
            operation.call()
        completed = True
    except KeyboardInterrupt:
        pass
    except Exception as error:
        problems.append(f"the call raised {error!r} instead")
    if completed and injection.where is not None:
        problems.append("the KeyboardInterrupt was swallowed")
    gc.collect()
    if toil_threading.current_process_name_lock.locked():
        problems.append("current_process_name_lock is left held: get_process_name would hang")
        toil_threading.current_process_name_lock.release()
    try:
        operation.settle(completed, problems)
    except Exception as error:
        problems.append(f"the caller's clean-up raised {error!r}")
        with suppress(Exception):  # what the caller (or atexit) would do with its names
            toil_threading.destroy_all_process_names()
    operation.drop()
    gc.collect()
    left = new_descriptors(before)
    if left:
        problems.append(f"descriptors open after the caller's clean-up: {left}")
    try:
        operation.verify(problems)
    except Exception as error:
        problems.append(f"checking the state after the call raised {error!r}")
    close_all(left)  # so that the next run starts clean
    if unraisable:
        problems.append(f"finalizer errors: {unraisable}")
    printed = said()
    if printed:
        problems.append(f"printed: {printed!r}")
    return injection.where, problems


def sweep(make: type[Operation], core: str, base: Path) -> tuple[int, list[str]]:
    """Interrupt the call at each of its lines in turn (in a forked child: its own state).

    Returns how many lines were interrupted and a line for each one that went wrong.
    """
    gc.freeze()  # the test process's objects: collections here look at ours only
    checker = Checker(core)
    wrong = []
    try:
        with stderr_captured() as said:
            _, problems = interrupted_at(make, base / "warm", checker, 0, said)
            assert not problems, f"even without an interrupt: {problems}"
            for at in range(1, MOST_LINES):
                where, problems = interrupted_at(make, base / str(at), checker, at, said)
                if problems:
                    wrong.append(f"line {at} ({where or 'not reached'}): {'; '.join(problems)}")
                if where is None:
                    return at - 1, wrong
    finally:
        checker.close()
    raise AssertionError(f"the call did not complete with {MOST_LINES} lines to strike")


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_interrupted_at_any_line_leaves_nothing_held(
    core: str, shm_dir: Path, operation: str
) -> None:
    points, wrong = in_child(lambda: sweep(OPERATIONS[operation], core, shm_dir), timeout=60)
    summary = f"{core} core, {operation}: {points} injection points, {len(wrong)} went wrong"
    print(summary)
    assert points > 0, "no line of the package was reached"
    assert not wrong, summary + ":\n" + "\n".join(wrong[:10])


# A SIGINT storm.  The child loops over the calls until told to stop; SIGINT raises
# KeyboardInterrupt in it while a call runs (its own bookkeeping in between is left
# alone), and a call that blocks for a second (on a lock this process holds and lost)
# is cut short and counted as stuck.  After each interrupted call it cleans up with what
# it has, as a caller would.  It reports once stopped, then waits for its stdin to end.
STORM = r"""
import gc, json, os, signal, sys, toil_threading

directory, stop = os.environ["STORM_DIRECTORY"], os.environ["STORM_STOP"]
armed = False
unraisable = []
counts = {}
errors = []

class Stuck(BaseException):
    pass

def interrupt(signum, frame):
    if armed:
        raise KeyboardInterrupt

def cut_short(signum, frame):
    raise Stuck

signal.signal(signal.SIGINT, interrupt)
signal.signal(signal.SIGALRM, cut_short)
sys.unraisablehook = lambda hook: unraisable.append(
    f"{hook.exc_type.__name__}: {hook.exc_value} ({hook.err_msg} {hook.object!r})"
)

def attempt(what, action, interruptible=True):
    global armed
    tally = counts.setdefault(what, {"completed": 0, "interrupted": 0, "stuck": 0, "failed": 0})
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        armed = interruptible
        action()
        armed = False
        tally["completed"] += 1
    except KeyboardInterrupt:
        armed = False
        tally["interrupted"] += 1
    except Stuck:
        armed = False
        tally["stuck"] += 1
    except Exception as error:
        armed = False
        tally["failed"] += 1
        if len(errors) < 10:
            errors.append(f"{what}: {error!r}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)

def round_trip():
    with toil_threading.global_mutex(directory, "m"):
        pass

def leave(arena):
    for _ in arena.leave():
        pass

def one_round():
    attempt("global_mutex round trip", round_trip)
    arena = toil_threading.LastProcessStandingArena(directory, "pool")
    attempt("arena enter", arena.enter)
    if arena.lockfileFD is not None:
        attempt("arena leave", lambda: leave(arena))
    if arena.lockfileFD is not None:
        attempt("retry: arena leave", lambda: leave(arena), interruptible=False)
    del arena
    attempt("get_process_name", lambda: toil_threading.get_process_name(directory))
    attempt("destroy_all_process_names", toil_threading.destroy_all_process_names)
    attempt(
        "retry: destroy_all_process_names",
        toil_threading.destroy_all_process_names,
        interruptible=False,
    )

def descriptors():
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return {fd: path for fd, path in found.items() if not path.startswith("/proc/")}

one_round()
counts.clear()
gc.collect()
baseline = descriptors()
print("ready", flush=True)
rounds = 0
while not os.path.exists(stop):
    one_round()
    rounds += 1
gc.collect()
leaked = sorted((fd, path) for fd, path in descriptors().items() if baseline.get(fd) != path)
report = {
    "rounds": rounds,
    "counts": counts,
    "errors": errors,
    "leaked": len(leaked),
    "some leaked": leaked[:5],
    "unraisable": len(unraisable),
    "some unraisable": unraisable[:5],
}
print(json.dumps(report), flush=True)
sys.stdin.read()
"""


def locked(path: Path) -> bool:
    """Does some open file hold a lock on path? (A shared flock of ours would conflict.)"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def mutex_free(directory: Path, name: str) -> bool:
    try:
        with toil_threading.global_mutex(directory, name, timeout=0):
            return True
    except TimeoutError:
        return False


def some(count: int, examples: list[Any]) -> str:
    """How many were found and the first few ("" for none)."""
    return f"{count}, such as {examples[:3]}" if count else ""


def written(file: IO[str]) -> str:
    """The end of what a child wrote to file (which it shares with us, offset and all)."""
    file.seek(0)
    return file.read()[-3000:]


def storm(pid: int, seconds: float) -> int:
    """SIGINT to pid in a tight loop for seconds; returns how many were sent."""
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        os.kill(pid, signal.SIGINT)
        sent += 1
        time.sleep(0.0001)
    return sent


def test_sigint_storm_leaves_nothing_held(core: str, shm_dir: Path, tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    with open(tmp_path / "stderr", "w+") as stderr:
        child = python_with_core(
            core,
            STORM,
            env={"STORM_DIRECTORY": str(shm_dir), "STORM_STOP": str(stop)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        try:
            ready = next_line(child, 60)
            assert ready == "ready", f"the child did not start: {written(stderr)}"
            sent = storm(child.pid, 3.0)
            stop.touch()
            said = next_line(child, 60)
            assert said is not None, f"no report (exit {child.wait(10)}): {written(stderr)}"
            report = json.loads(said)
            # While the child lives: whatever it still holds shows.
            free = {mutex: mutex_free(shm_dir, mutex) for mutex in ("m", "pool-arena-lock")}
            members = shm_dir / "pool-arena-members"
            live_members = (
                sorted(entry.name for entry in members.iterdir() if locked(entry))
                if members.is_dir()
                else []
            )
            live_names = sorted(
                entry.name
                for entry in shm_dir.iterdir()
                if entry.name.startswith("tmp") and locked(entry)
            )
            assert child.stdin is not None
            child.stdin.close()
            status = child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        printed = written(stderr)
    counts: dict[str, dict[str, int]] = report["counts"]
    calls = {what: tally for what, tally in counts.items() if not what.startswith("retry")}
    completed = sum(tally["completed"] for tally in calls.values())
    interrupted = sum(tally["interrupted"] for tally in calls.values())
    stuck = {what: tally["stuck"] for what, tally in counts.items() if tally["stuck"]}
    failed = {what: tally["failed"] for what, tally in counts.items() if tally["failed"]}
    print(
        f"{core} core: {sent} SIGINTs, {report['rounds']} rounds, {completed} calls completed,"
        f" {interrupted} interrupted, {report['leaked']} descriptors leaked; {counts}"
    )
    assert status == 0, printed
    # Not vacuous: every kind of call both completed and was interrupted, many times over.
    assert completed >= 100 and interrupted >= 100, counts
    assert all(tally["completed"] and tally["interrupted"] for tally in calls.values()), counts
    held = [mutex for mutex, taken in free.items() if not taken]
    wrong = {
        "descriptors left open": some(report["leaked"], report["some leaked"]),
        "calls blocked on a lock this process lost": stuck or "",
        "calls that failed": f"{failed} {report['errors'][:3]}" if failed else "",
        "mutexes still held by the child": held or "",
        "arena members still locked": some(len(live_members), live_members),
        "names still locked after destroy_all_process_names": some(len(live_names), live_names),
        "finalizer errors": some(report["unraisable"], report["some unraisable"]),
        "printed": printed[-1000:],
    }
    wrong = {what: detail for what, detail in wrong.items() if detail}
    assert not wrong, f"{core} core, after the storm:\n" + "\n".join(
        f"{what}: {detail}" for what, detail in wrong.items()
    )
