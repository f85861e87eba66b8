"""Bad arguments, table-driven: the two cores answer alike, and never act on a stand-in.

Each row makes one public call with one bad argument (a descriptor that is a float, a
bool, negative, huge, closed or a str; a file object; a path with NUL, of bytes or empty;
a name that is not one plain path component; a timeout that is not a number of seconds).
The row runs in a forked child per core, each child starting from the same state: it
holds locked files of its own on descriptors 0, 1, 3 and HELD, makes the call, and notes
what it raised or returned and what became of those descriptors.  The compiled and the
pure core must tell the same story, and a bad descriptor must leave every descriptor it
did not name as it was (3.7 is not 3; True is not 1).

Failures injected into close(2) and fstat(2) during a release, in subprocesses, must also
be told alike, leak no descriptor and leave the mutex free.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from children import in_child
from conftest import CORES, build_c, linux_only, load_core, python_with_core

import toil_threading
from toil_threading import _impl

pytestmark = linux_only

both_cores = pytest.mark.skipif(len(CORES) < 2, reason="needs both cores installed")

# The descriptor number each scene holds its main locked file on, and every number it owns
# (0 and 1 stand where True and False would point, 3 where 3.7 would be cut down to).
HELD = 50
OWNED = (0, 1, 3, HELD)


class BytesPath:
    """An os.PathLike whose path is bytes."""

    def __init__(self, path: Path) -> None:
        self.path = os.fsencode(path)

    def __fspath__(self) -> bytes:
        return self.path


class FloatFileno:
    """An object with a fileno() that answers a float (equal to HELD: nothing to round)."""

    def fileno(self) -> float:
        return float(HELD)


class Scene:
    """What a child holds while it makes a row's call: a locked file of its own on each
    number in OWNED (whatever was there is put back afterwards), and files it tracks."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.tracked: dict[int, Path] = {}
        self._saved: dict[int, int] = {}
        for number in OWNED:
            with contextlib.suppress(OSError):  # nothing there: nothing to put back
                # Kept above the numbers in play, so that nothing lands on a saved copy.
                self._saved[number] = fcntl.fcntl(number, fcntl.F_DUPFD_CLOEXEC, 100)
        for number in OWNED:
            path = directory / f"held-{number}"
            fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_SH)  # shared: a lock taken through it would show
            if fd != number:
                os.dup2(fd, number)
                os.close(fd)
            self.tracked[number] = path
        # A number known to be closed: the lowest one free now.
        self.closed = os.open(directory, os.O_RDONLY)
        os.close(self.closed)

    def file_object(self, name: str = "object") -> Any:
        """An open file object on a fresh file, tracked by its descriptor."""
        path = self.dir / name
        opened = open(path, "w+")  # noqa: SIM115 (the row's call may close it)
        self.tracked[opened.fileno()] = path
        return opened

    def state(self) -> dict[int, str]:
        """What each tracked number is now: "closed", or its file's name and the strongest
        flock something holds on that file ("exclusive", "shared" or "free")."""
        found = {}
        for number in self.tracked:
            try:
                found[number] = os.path.basename(os.readlink(f"/proc/self/fd/{number}"))
            except FileNotFoundError:
                found[number] = "closed"
        for number, path in self.tracked.items():
            if found[number] == path.name:
                found[number] += " " + held_lock(path)
        return found

    def restore(self) -> None:
        for number in OWNED:
            if number in self._saved:
                os.dup2(self._saved[number], number)
                os.close(self._saved[number])
            else:
                with contextlib.suppress(OSError):
                    os.close(number)


def held_lock(path: Path) -> str:
    """The strongest flock held on path by other open files: "exclusive", "shared" or
    "free" (found with probes of our own, let go at once)."""
    probe = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for operation, weaker in ((fcntl.LOCK_SH, "exclusive"), (fcntl.LOCK_EX, "shared")):
            try:
                fcntl.flock(probe, operation | fcntl.LOCK_NB)
            except BlockingIOError:
                return weaker
            fcntl.flock(probe, fcntl.LOCK_UN)
        return "free"
    finally:
        os.close(probe)


# The state of a scene nobody acted on.
UNTOUCHED = {number: f"held-{number} shared" for number in OWNED}


class Row(NamedTuple):
    function: str  # the public call made
    kind: str  # "descriptor", "file object", "path", "name", "timeout" or "other"
    value: str  # the bad argument, in words
    setup: Callable[[Scene], Callable[[], object]]  # in the child: the call to make

    @property
    def id(self) -> str:
        return f"{self.function}-{self.kind.replace(' ', '-')}={self.value}"


def held_path(scene: Scene) -> Path:
    return scene.dir / f"held-{HELD}"


def entered(mutex: Any) -> None:
    with mutex:
        pass


def arena_enter(base_dir: Any, name: Any, timeout: Any = None) -> None:
    toil_threading.LastProcessStandingArena(base_dir, name).enter(timeout=timeout)


Call = Callable[[Scene, Any], object]

# Descriptor arguments: (in words, the value from the scene).
BAD_DESCRIPTORS: list[tuple[str, Callable[[Scene], Any]]] = [
    ("HELD+0.9", lambda s: HELD + 0.9),
    ("3.7", lambda s: 3.7),
    ("True", lambda s: True),
    ("False", lambda s: False),
    ("-1", lambda s: -1),
    ("2**40", lambda s: 2**40),
    ("closed", lambda s: s.closed),
    ("str", lambda s: str(HELD)),
    ("fileno-float", lambda s: FloatFileno()),
]
# Bad in kind, not only in value: refused by type or sign, naming the argument.
REFUSED_BY_KIND = {"HELD+0.9", "3.7", "True", "False", "-1"}

DESCRIPTOR_CALLS: list[tuple[str, Call]] = [
    ("safe_lock", lambda s, fd: toil_threading.safe_lock(fd)),
    ("safe_unlock_and_close", lambda s, fd: toil_threading.safe_unlock_and_close(fd)),
    ("locked_file_is", lambda s, fd: toil_threading.locked_file_is(fd, held_path(s))),
]


def calling(call: Call, make: Callable[[Scene], Any]) -> Callable[[Scene], Callable[[], object]]:
    """A row's setup: the argument made from the scene, then call with it."""

    def setup(scene: Scene) -> Callable[[], object]:
        value = make(scene)
        return lambda: call(scene, value)

    return setup


def file_object_row(function: str) -> Callable[[Scene], Callable[[], object]]:
    def setup(scene: Scene) -> Callable[[], object]:
        opened = scene.file_object()
        if function == "safe_lock":
            return lambda: toil_threading.safe_lock(opened)
        if function == "safe_unlock_and_close":
            fcntl.flock(opened.fileno(), fcntl.LOCK_EX)
            return lambda: toil_threading.safe_unlock_and_close(opened)
        return lambda: toil_threading.locked_file_is(opened, scene.dir / "object")

    return setup


BAD_PATHS: list[tuple[str, Callable[[Path], Any]]] = [
    ("NUL", lambda d: f"{d}\0x"),
    ("bytes", lambda d: os.fsencode(d)),
    ("empty", lambda d: ""),
    ("bytes-PathLike", lambda d: BytesPath(d)),
]

PATH_CALLS: list[tuple[str, Call]] = [
    ("locked_file_is", lambda s, p: toil_threading.locked_file_is(HELD, p)),
    ("global_mutex", lambda s, p: entered(toil_threading.global_mutex(p, "m"))),
    ("get_process_name", lambda s, p: toil_threading.get_process_name(p)),
    ("process_name_exists", lambda s, p: toil_threading.process_name_exists(p, "tmpabcdefgh")),
    ("LastProcessStandingArena", lambda s, p: arena_enter(p, "a")),
    ("ensure_filesystem_lockable", lambda s, p: toil_threading.ensure_filesystem_lockable(p)),
    ("filesystem_report", lambda s, p: toil_threading.filesystem_report(p)),
]

BAD_NAMES: list[tuple[str, object]] = [
    ("NUL", "a\0b"),
    ("slash", "a/b"),
    ("dot", "."),
    ("dotdot", ".."),
    ("empty", ""),
    ("300-chars", "n" * 300),
    ("int", 5),
    ("bytes", b"m"),
]

NAME_CALLS: list[tuple[str, Call]] = [
    ("global_mutex", lambda s, n: entered(toil_threading.global_mutex(s.dir, n))),
    ("process_name_exists", lambda s, n: toil_threading.process_name_exists(s.dir, n)),
    ("LastProcessStandingArena", lambda s, n: arena_enter(s.dir, n)),
]

BAD_TIMEOUTS: list[tuple[str, object]] = [
    ("-1", -1),
    ("nan", math.nan),
    ("inf", math.inf),
    ("str", "x"),
    ("True", True),
]

TIMEOUT_CALLS: list[tuple[str, Call]] = [
    ("safe_lock", lambda s, t: toil_threading.safe_lock(HELD, timeout=t)),
    ("global_mutex", lambda s, t: entered(toil_threading.global_mutex(s.dir, "m", timeout=t))),
    ("LastProcessStandingArena.enter", lambda s, t: arena_enter(s.dir, "a", t)),
    (
        "ensure_filesystem_lockable",
        lambda s, t: toil_threading.ensure_filesystem_lockable(s.dir, timeout=t),
    ),
]


def name_then(remove: str, function: Callable[[], object]) -> Callable[[Scene], Any]:
    """A name in a directory of the scene, its file (or the whole directory) removed
    behind the process's back, then function."""

    def setup(scene: Scene) -> Callable[[], object]:
        directory = scene.dir / "names"
        directory.mkdir()
        name = toil_threading.get_process_name(directory)
        if remove == "file":
            (directory / name).unlink()
        else:
            shutil.rmtree(directory)
        return function

    return setup


def with_an_argument(function: Callable[[], object]) -> Callable[[Scene], Any]:
    return lambda s: lambda: function(s.dir)  # type: ignore[call-arg]


OTHER_ROWS = [
    Row(
        "destroy_all_process_names",
        "other",
        "an-argument",
        with_an_argument(toil_threading.destroy_all_process_names),
    ),
    Row(
        "collect_process_name_garbage",
        "other",
        "an-argument",
        with_an_argument(toil_threading.collect_process_name_garbage),
    ),
    Row(
        "destroy_all_process_names",
        "other",
        "name-file-removed",
        name_then("file", toil_threading.destroy_all_process_names),
    ),
    Row(
        "destroy_all_process_names",
        "other",
        "directory-removed",
        name_then("directory", toil_threading.destroy_all_process_names),
    ),
    Row(
        "collect_process_name_garbage",
        "other",
        "directory-removed",
        name_then("directory", toil_threading.collect_process_name_garbage),
    ),
    Row(
        "LastProcessStandingArena.leave",
        "other",
        "never-entered",
        lambda s: lambda: list(toil_threading.LastProcessStandingArena(s.dir, "a").leave()),
    ),
    # A directory whose filesystem makes no files (/proc): refused at once, in one wording.
    Row(
        "global_mutex",
        "other",
        "proc",
        lambda s: lambda: entered(toil_threading.global_mutex("/proc", "m")),
    ),
    Row(
        "get_process_name",
        "other",
        "proc",
        lambda s: lambda: toil_threading.get_process_name("/proc"),
    ),
    Row(
        "LastProcessStandingArena.enter",
        "other",
        "proc",
        lambda s: lambda: arena_enter("/proc", "a"),
    ),
]


def all_rows() -> list[Row]:
    table: list[tuple[str, list[tuple[str, Call]], list[tuple[str, Any]]]] = [
        ("descriptor", DESCRIPTOR_CALLS, BAD_DESCRIPTORS),
        ("path", PATH_CALLS, [(v, lambda s, make=make: make(s.dir)) for v, make in BAD_PATHS]),
        ("name", NAME_CALLS, [(v, lambda s, value=value: value) for v, value in BAD_NAMES]),
        (
            "timeout",
            TIMEOUT_CALLS,
            [(v, lambda s, value=value: value) for v, value in BAD_TIMEOUTS],
        ),
    ]
    rows = [
        Row(function, kind, value, calling(call, make))
        for kind, calls, values in table
        for function, call in calls
        for value, make in values
    ]
    rows += [
        Row(function, "file object", "open", file_object_row(function))
        for function, _ in DESCRIPTOR_CALLS
    ]
    return rows + OTHER_ROWS


ROWS = all_rows()

Outcome = tuple[str, str, dict[int, str]]


def outcome_on(core: str, row: Row, directory: Path) -> Outcome:
    """In a forked child on core: set the scene up in directory, make the row's call, and
    tell (exception type, message) or ("ok", repr(result)), with the scene after it."""

    def body() -> Outcome:
        _impl.use_core(load_core(core))
        scene = Scene(directory)
        try:
            call = row.setup(scene)
            try:
                told = ("ok", repr(call()))
            except Exception as error:
                told = (type(error).__name__, str(error))
            return (*told, scene.state())
        finally:
            scene.restore()

    return in_child(body, timeout=20)  # type: ignore[no-any-return]


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    """One directory path for both cores' children: made fresh for each, removed after."""
    return tmp_path / "work"


def outcomes(row: Row, work_dir: Path) -> dict[str, Outcome]:
    found = {}
    for core in CORES:
        work_dir.mkdir()
        try:
            found[core] = outcome_on(core, row, work_dir)
        finally:
            shutil.rmtree(work_dir)
    return found


@both_cores
@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_arguments_are_told_alike(row: Row, work_dir: Path) -> None:
    """Both cores give the same exception type and message (or the same result) for every
    bad argument, and leave the same descriptors open and locked."""
    found = outcomes(row, work_dir)
    compiled, pure = found["compiled"], found["pure"]
    assert compiled == pure, f"the cores differ:\n  compiled: {compiled}\n  pure:     {pure}"


@pytest.mark.parametrize(
    "row", [row for row in ROWS if row.kind != "other"], ids=lambda row: row.id
)
def test_bad_arguments_meet_the_promised_outcome(core: str, row: Row, work_dir: Path) -> None:
    """On each core: a bad descriptor acts on no descriptor (none is closed, unlocked or
    locked: 3.7 is not 3 and True is not 1), and one bad in kind (a float, a bool, a negative
    number) is a TypeError or ValueError naming fd; a file object is accepted and acted on
    through fileno(); a path with NUL is a ValueError; bad names and timeouts are refused
    before anything is made."""
    work_dir.mkdir()
    kind, message, after = outcome_on(core, row, work_dir)
    value, function = row.value, row.function
    made = sorted(os.listdir(work_dir))
    shutil.rmtree(work_dir)
    if row.kind == "descriptor":
        assert after == UNTOUCHED, f"{row.id} acted on a descriptor: {after} ({kind}: {message})"
        assert kind != "ok", f"{row.id} was accepted: {message}"
        if value in REFUSED_BY_KIND:
            assert kind in ("TypeError", "ValueError"), (kind, message)
            assert "fd" in message, f"{row.id}: the message names no argument: {message}"
    elif row.kind == "file object":
        object_fd = next(number for number in after if number not in OWNED)
        expected = {
            "safe_lock": ("ok", "None", "object exclusive"),
            "safe_unlock_and_close": ("ok", "None", "closed"),
            "locked_file_is": ("ok", "True", "object free"),
        }[function]
        assert (kind, message, after[object_fd]) == expected
        assert {number: after[number] for number in OWNED} == UNTOUCHED
    elif function == "ensure_filesystem_lockable" and row.kind == "timeout":
        # Kept only for Toil's signature (it bounded a subprocess there): the cores must
        # agree on it, and it must act on nothing.
        assert after == UNTOUCHED
    else:
        assert kind != "ok", f"{row.id} was accepted: {message}"
        assert after == UNTOUCHED
        if row.kind == "path" and value == "NUL":
            assert kind == "ValueError", (kind, message)
        if row.kind in ("name", "timeout"):
            assert kind in ("TypeError", "ValueError"), (kind, message)
            assert made == sorted(f"held-{number}" for number in OWNED), made


@pytest.mark.parametrize(("value", "number"), [(HELD + 0.7, HELD), (3.7, 3), (True, 1)])
def test_unlock_and_close_never_reaches_the_descriptor_it_was_not_given(
    core: str, tmp_path: Path, value: object, number: int
) -> None:
    """safe_unlock_and_close(N + 0.7), (3.7) and (True) leave descriptors N, 3 and 1 open
    and still locked: a bad descriptor is refused, never rounded or read as a number."""

    def unlock_and_close() -> tuple[str, str]:
        scene = Scene(tmp_path)
        try:
            try:
                toil_threading.safe_unlock_and_close(value)  # type: ignore[arg-type]
                told = "returned"
            except (TypeError, ValueError) as error:
                told = type(error).__name__
            return told, scene.state()[number]
        finally:
            scene.restore()

    told, after = in_child(unlock_and_close, timeout=20)
    assert after == f"held-{number} shared", f"descriptor {number} was acted on: {after}"
    assert told in ("TypeError", "ValueError"), f"{value!r} was accepted"


# Injected failures of close(2) and fstat(2): an LD_PRELOAD shim of our own, armed by the
# child through its environment (os.environ calls putenv) for files whose path holds a
# marker, so the interpreter's start and the acquisition go through untouched.

SYSCALL_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The errno to inject for the call whose variable is set, on a marked file; else 0. */
static int injected(const char *variable, int fd)
{
    const char *code = getenv(variable), *marker = getenv("FAULT_SYSCALL_PATH");
    char link[64], target[4096];
    int saved = errno;
    ssize_t n;

    if (!code || !*code || !marker || !*marker)
        return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    n = readlink(link, target, sizeof target - 1);
    errno = saved;
    if (n < 0)
        return 0;
    target[n] = '\0';
    return strstr(target, marker) ? atoi(code) : 0;
}

typedef int (*fstat_fn)(int, struct stat *);
typedef int (*fstat64_fn)(int, struct stat64 *);
typedef int (*close_fn)(int);

int fstat(int fd, struct stat *buf)
{
    int err = injected("FAULT_FSTAT_ERRNO", fd);
    if (err) {
        errno = err;
        return -1;
    }
    return ((fstat_fn)dlsym(RTLD_NEXT, "fstat"))(fd, buf);
}

int fstat64(int fd, struct stat64 *buf)
{
    int err = injected("FAULT_FSTAT_ERRNO", fd);
    if (err) {
        errno = err;
        return -1;
    }
    return ((fstat64_fn)dlsym(RTLD_NEXT, "fstat64"))(fd, buf);
}

/* As Linux does: the descriptor is freed, and the error reported after. */
int close(int fd)
{
    int err = injected("FAULT_CLOSE_ERRNO", fd);
    int rc = ((close_fn)dlsym(RTLD_NEXT, "close"))(fd);
    if (rc == 0 && err) {
        errno = err;
        return -1;
    }
    return rc;
}
"""


@pytest.fixture(scope="module")
def syscall_faults(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of a shim making fstat(2) or close(2) fail on marked files, built here."""
    out_dir = tmp_path_factory.mktemp("syscallfaults")
    source = out_dir / "syscallfaults.c"
    source.write_text(SYSCALL_SHIM)
    return build_c(source, out_dir / "libsyscallfaults.so", "-shared", "-fPIC", "-ldl")


# In a child on one core: take the mutex, arm the fault while holding it, let go; tell
# what the release raised, how many descriptors the process has gained, and whether the
# mutex can be had again at once.
FAULTED_RELEASE = """
import json, os, sys, toil_threading
base, variable, how = sys.argv[1:]
def count():
    return len(os.listdir("/proc/self/fd"))
before = count()
try:
    if how == "mutex":
        with toil_threading.global_mutex(base, "m", timeout=5):
            os.environ[variable] = "5"
    else:
        fd = os.open(os.path.join(base, "toil-mutex-m"), os.O_CREAT | os.O_RDWR)
        toil_threading.safe_lock(fd)
        os.environ[variable] = "5"
        toil_threading.safe_unlock_and_close(fd)
    told = ["returned", None, None]
except Exception as error:
    told = [type(error).__name__, getattr(error, "errno", None), str(error)]
finally:
    os.environ.pop(variable, None)
leaked = count() - before
try:
    with toil_threading.global_mutex(base, "m", timeout=0):
        free = True
except TimeoutError:
    free = False
print(json.dumps({"told": told, "leaked": leaked, "free": free}))
"""


@both_cores
@pytest.mark.parametrize(
    ("variable", "how"),
    [
        ("FAULT_FSTAT_ERRNO", "mutex"),
        ("FAULT_CLOSE_ERRNO", "mutex"),
        ("FAULT_CLOSE_ERRNO", "safe_unlock_and_close"),
    ],
    ids=["fstat-EIO-at-mutex-release", "close-EIO-at-mutex-release", "close-EIO-at-unlock"],
)
def test_injected_release_failures_are_told_alike(
    tmp_path: Path, syscall_faults: str, variable: str, how: str
) -> None:
    """EIO from fstat(2) or close(2) while letting go: both cores raise (or not) the same
    exception type, errno and message, leak no descriptor, and leave the mutex free."""
    found: dict[str, dict[str, Any]] = {}
    for core in CORES:
        base = tmp_path / "faulty"  # one path for both, so that messages compare
        base.mkdir()
        env = {"LD_PRELOAD": syscall_faults, "FAULT_SYSCALL_PATH": f"{base}/"}
        code = "import sys\nsys.argv[1:] = " + repr([str(base), variable, how]) + "\n"
        child = python_with_core(
            core, code + FAULTED_RELEASE, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        found[core] = json.loads(out)
        mutex_file = base / "toil-mutex-m"
        if mutex_file.exists():  # still there: nobody may hold it
            probe = os.open(mutex_file, os.O_RDONLY)
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(probe)
        shutil.rmtree(base)
    for core, report in found.items():
        assert (report["leaked"], report["free"]) == (0, True), f"{core}: {report}"
    compiled, pure = found["compiled"]["told"], found["pure"]["told"]
    assert compiled == pure, f"the cores differ:\n  compiled: {compiled}\n  pure:     {pure}"
    if compiled[0] != "returned":
        assert compiled[1] == errno.EIO, compiled


def test_the_shim_injects_only_when_armed(tmp_path: Path, syscall_faults: str) -> None:
    """The shim itself: fstat and close fail with EIO on a marked file once armed (close
    still frees the descriptor), and never before."""
    marker = f"marked-{uuid.uuid4().hex}"
    code = f"""
import errno, json, os
path = {str(tmp_path / marker)!r}
fd = os.open(path, os.O_CREAT | os.O_RDWR)
os.fstat(fd)
os.environ["FAULT_FSTAT_ERRNO"] = "5"
os.environ["FAULT_CLOSE_ERRNO"] = "5"
told = []
for call in (os.fstat, os.close):
    try:
        call(fd)
        told.append(0)
    except OSError as error:
        told.append(error.errno)
try:
    os.fstat(fd)
except OSError as error:
    told.append(error.errno)
print(json.dumps(told))
"""
    child = python_with_core(
        "pure",
        code,
        env={"LD_PRELOAD": syscall_faults, "FAULT_SYSCALL_PATH": marker},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert json.loads(out) == [errno.EIO, errno.EIO, errno.EBADF]
