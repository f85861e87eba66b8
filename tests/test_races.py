"""The base directory is opened once per operation, and held things remember it.

Every operation opens base_dir once (its last component without following a link,
unless the link is the caller's own or root's: another user's link is ELOOP) and works
relative to that descriptor.  A held mutex, a process name and an arena membership keep
their directory, so letting go acts where they were taken, whatever the path names by
then.  Three ways to break that are tried here, on both cores:

* another user swaps the base directory for a link to root's files, over and over,
  while root works in it (`swapper.c`, compiled at test time);
* a base_dir given as a link, owned by the caller, by root or by someone else;
* a relative base_dir, and a chdir between taking and letting go.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import subprocess
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from children import NOBODY, Forked, in_child
from conftest import assert_locked_elsewhere, linux_only, needs_root, run_cli, skip_or_fail

import toil_threading
from toil_threading import _cli

pytestmark = linux_only

ANOTHER_USER = (4242, 4242)  # neither root nor nobody, nor the caller of any test here


def contents(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# What a directory holds, to the byte.

Entry = tuple[int, int, int, int, bytes]  # mode, inode, size, mtime (ns), a file's bytes


def snapshot(top: Path) -> dict[str, Entry]:
    """Every entry under top (top itself as "."), by its path relative to top."""
    found: dict[str, Entry] = {}
    pending = [top]
    while pending:
        path = pending.pop()
        info = path.lstat()
        data = path.read_bytes() if stat.S_ISREG(info.st_mode) else b""
        found[str(path.relative_to(top))] = (
            info.st_mode,
            info.st_ino,
            info.st_size,
            info.st_mtime_ns,
            data,
        )
        if stat.S_ISDIR(info.st_mode):
            pending.extend(path.iterdir())
    return found


def changes(before: dict[str, Entry], after: dict[str, Entry]) -> list[str]:
    """What differs between two snapshots, one line per entry."""
    return [
        f"{path}: {before.get(path, 'absent')} -> {after.get(path, 'absent')}"
        for path in sorted(before.keys() | after.keys())
        if before.get(path) != after.get(path)
    ]


def assert_unchanged(top: Path, before: dict[str, Entry], what: str) -> None:
    """Fail, saying what changed, unless top holds what it held when before was taken."""
    changed = changes(before, snapshot(top))
    if changed:
        shown = changed[:20] + ([f"... and {len(changed) - 20} more"] if len(changed) > 20 else [])
        pytest.fail("\n".join([f"{what} changed:", *shown]))


# The operations that create or remove files in base_dir, each one round trip.  A refusal
# is an OSError; anything else going wrong raises something else.

Operation = Callable[[str, str, bool], None]  # (core, base_dir, command line in-process)


def mutex_round_trip(core: str, base: str, in_process: bool) -> None:
    with toil_threading.global_mutex(base, "m", timeout=10):
        pass


def name_then_destroy(core: str, base: str, in_process: bool) -> None:
    """get_process_name in a forked child, which then destroys its names."""

    def name_and_destroy() -> int:
        try:
            toil_threading.get_process_name(base)
            toil_threading.destroy_all_process_names()
        except OSError as error:
            if isinstance(error, TimeoutError) or error.errno is None:
                raise
            return error.errno
        return 0

    refused = in_child(name_and_destroy, timeout=30)
    if refused:
        raise OSError(refused, os.strerror(refused))


def name_exists(core: str, base: str, in_process: bool) -> None:
    if toil_threading.process_name_exists(base, "tmpcanary01"):
        raise AssertionError("process_name_exists found a name nobody holds alive")


def arena_round_trip(core: str, base: str, in_process: bool) -> None:
    arena = toil_threading.LastProcessStandingArena(base, "pool")
    arena.enter(timeout=10)
    cleanups = sum(1 for _ in arena.leave())
    if cleanups != 1:
        raise AssertionError(f"the only member of the arena was told {cleanups} times to clean")


class CommandRefused(Exception):
    """The command line reported an error in its own words (exit 2, no traceback)."""


def command(core: str, in_process: bool, *args: str) -> None:
    """The command line, to its end: exit 0; an OSError for a system error it reports
    (found by its message), CommandRefused for another error it reports.

    In-process, in this (forked) process; otherwise as `python -I -m toil_threading`."""
    if in_process:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = _cli.main(list(args))
        stderr = err.getvalue()
    else:
        done = run_cli(core, *args)
        status, stderr = done.returncode, done.stderr
    errors = [line for line in stderr.splitlines() if line.startswith("toil-threading: error: ")]
    if "Traceback" in stderr or status not in (0, 2) or (status == 2) != bool(errors):
        raise AssertionError(f"{args}: exit {status}\n{stderr}")
    if status == 2:
        message = errors[-1].removeprefix("toil-threading: error: ")
        for code in errno.errorcode:
            if message.endswith(f": {os.strerror(code)}"):
                raise OSError(code, message)
        raise CommandRefused(message)


def inspect_clean(core: str, base: str, in_process: bool) -> None:
    command(core, in_process, "inspect", "--clean", base)


def verify_hold(core: str, base: str, in_process: bool) -> None:
    command(core, in_process, "verify", base, "--hold", "0.05")


COMMANDS = ("inspect-clean", "verify-hold")
OPERATIONS: dict[str, Operation] = {
    "mutex": mutex_round_trip,
    "name": name_then_destroy,
    "exists": name_exists,
    "arena": arena_round_trip,
    "inspect-clean": inspect_clean,
    "verify-hold": verify_hold,
}


def attempt(operation: Operation, core: str, base: str, in_process: bool) -> str:
    """One try: "ok"; the errno name of the OSError that refused it; or "said: " and
    the error the command line reported, base_dir shown as BASE.

    Anything else (another exception, a TimeoutError, an OSError with no errno) is
    raised as an AssertionError carrying its traceback."""
    try:
        operation(core, base, in_process)
    except CommandRefused as refused:
        return f"said: {str(refused).replace(base, 'BASE')}"
    except TimeoutError:
        raise AssertionError(
            f"timed out where nobody holds anything:\n{traceback.format_exc()}"
        ) from None
    except OSError as error:
        if error.errno is None:
            raise AssertionError(f"an OSError with no errno:\n{traceback.format_exc()}") from None
        return errno.errorcode.get(error.errno, str(error.errno))
    except (Exception, pytest.fail.Exception):
        raise AssertionError(f"unexpected:\n{traceback.format_exc()}") from None
    return "ok"


# 1. Another user swaps the base directory for a link to root's directory, without end.

MINIMUM_SECONDS = 1.0  # each case tries its operation at least this long
MINIMUM_SUCCESSES = 3  # and until it succeeded this often,
LONGEST_SECONDS = 6.0  # though never longer than this
MINIMUM_EXCHANGES = 1000


class Scene(NamedTuple):
    parent: Path  # nobody's, 0755: only nobody (and root) may rename in it
    base: Path  # parent/base: nobody's directory, 0777, where root works
    link: Path  # parent/link: nobody's symbolic link to victim
    victim: Path  # root's directory, 0700, elsewhere


@pytest.fixture
def scene() -> Iterator[Scene]:
    needs_root()
    if not os.path.isdir("/dev/shm"):
        skip_or_fail("no /dev/shm on this machine")
    with (
        tempfile.TemporaryDirectory(dir="/dev/shm", prefix="toil-threading-race-") as parent_name,
        tempfile.TemporaryDirectory(dir="/dev/shm", prefix="toil-threading-victim-") as victim_name,
    ):
        parent, victim = Path(parent_name), Path(victim_name)
        # Root's files, named as the package names its own: what a followed link would let
        # it remove, lock, truncate or write.
        victim.chmod(0o700)
        (victim / "tmpcanary01").touch()  # like a dead process name
        (victim / "toil-mutex-m").write_bytes(b"someone's mutex file, with data\n")
        (victim / "toil-threading-verify").write_bytes(b'{"someone": "else"}\n')
        (victim / "pool-arena-members").mkdir(mode=0o700)
        (victim / "pool-arena-members" / "tmpcanary02").touch()  # like a dead member
        base = parent / "base"
        base.mkdir()
        os.chown(base, *NOBODY)
        base.chmod(0o777)
        link = parent / "link"
        link.symlink_to(victim)
        os.lchown(link, *NOBODY)
        os.chown(parent, *NOBODY)
        parent.chmod(0o755)
        yield Scene(parent, base, link, victim)


def race(operation: Operation, core: str, base: str) -> tuple[dict[str, int], list[str]]:
    """Try operation on base over and over: (count of each outcome, what went wrong)."""
    outcomes: Counter[str] = Counter()
    unexpected: list[str] = []
    started = time.monotonic()
    while len(unexpected) < 3:
        elapsed = time.monotonic() - started
        done = elapsed >= MINIMUM_SECONDS and outcomes["ok"] >= MINIMUM_SUCCESSES
        if done or elapsed >= LONGEST_SECONDS:
            break
        try:
            outcomes[attempt(operation, core, base, False)] += 1
        except AssertionError as error:
            unexpected.append(str(error))
    return dict(outcomes), unexpected


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_a_base_dir_swapped_for_another_users_link_is_never_followed(
    core: str,
    scene: Scene,
    swapper: str,
    operation: str,
    record_property: Callable[[str, object], None],
) -> None:
    before = snapshot(scene.victim)
    swapping = subprocess.Popen(
        [swapper, str(scene.base), str(scene.link), "60"],
        cwd="/",
        user=NOBODY[0],
        group=NOBODY[1],
        extra_groups=[],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not scene.base.is_symlink():  # it swaps
            assert swapping.poll() is None, swapping.communicate()
            assert time.monotonic() < deadline, "the swapper never swapped"
            time.sleep(0.001)
        outcomes, unexpected = in_child(
            lambda: race(OPERATIONS[operation], core, str(scene.base)), timeout=120
        )
        swapping.terminate()  # it makes one more exchange if need be, then says how many
        out, err = swapping.communicate(timeout=30)
    finally:
        if swapping.poll() is None:
            swapping.kill()
            swapping.communicate()
    assert swapping.returncode == 0, err
    exchanges = int(out)
    print(f"\n[{operation}, {core}] {exchanges} exchanges; outcomes {outcomes}")
    record_property("exchanges", exchanges)
    record_property("outcomes", outcomes)

    assert_unchanged(scene.victim, before, "root's directory behind the link")
    assert not unexpected, "\n\n".join(unexpected)
    assert exchanges >= MINIMUM_EXCHANGES, f"only {exchanges} exchanges: no race was run"
    assert outcomes.get("ok", 0) >= MINIMUM_SUCCESSES, f"too few succeeded: {outcomes}"
    # Both names are back as they began; whatever succeeded let go where it took.
    assert not scene.base.is_symlink() and scene.link.is_symlink()
    left = contents(scene.base)
    assert left == [], f"left behind in base_dir (outcomes {outcomes}): {left}"


# 2. A base_dir that is a link: followed when it is the caller's or root's, else ELOOP.

USERS = {"root": (0, 0), "nobody": NOBODY, "another user": ANOTHER_USER}


@pytest.mark.parametrize("operation", list(OPERATIONS))
@pytest.mark.parametrize(
    "caller,link_owner,followed",
    [
        ("root", "root", True),
        ("root", "nobody", False),
        ("nobody", "nobody", True),
        ("nobody", "root", True),
        ("nobody", "another user", False),
    ],
)
def test_a_base_dir_link_is_followed_only_when_the_callers_or_roots(
    core: str,
    open_parent: Path,
    operation: str,
    caller: str,
    link_owner: str,
    followed: bool,
) -> None:
    needs_root()
    target = open_parent / "target"
    target.mkdir()
    target.chmod(0o777)
    link = open_parent / "base"
    link.symlink_to(target)
    os.lchown(link, *USERS[link_owner])
    before = snapshot(target)

    def once() -> str:
        return attempt(OPERATIONS[operation], core, str(link), True)

    user = None if caller == "root" else USERS[caller]
    outcome = in_child(once, timeout=60, user=user, umask=0o000)
    if followed:
        assert outcome == "ok"
    else:
        # The library raises ELOOP; the command line says so, or says why in its words.
        said = outcome.startswith("said: BASE") and "link" in outcome
        assert outcome == "ELOOP" or (operation in COMMANDS and said), outcome
        assert_unchanged(target, before, "the directory the refused link points to")
    assert contents(target) == []  # what was made there was let go
    assert link.is_symlink()


# 3. A relative base_dir, and a chdir between taking and letting go.


@pytest.fixture
def siblings(shm_dir: Path) -> tuple[Path, Path]:
    """Two directories D1 and D2, each with a coordination directory `coord`."""
    first, second = shm_dir / "d1", shm_dir / "d2"
    for directory in (first, second):
        (directory / "coord").mkdir(parents=True)
    return first, second


def kill_all(*children: Forked | None) -> None:
    for child in children:
        if child is not None:
            child.kill()


def test_a_mutex_is_let_go_where_it_was_taken(core: str, siblings: tuple[Path, Path]) -> None:
    first, second = siblings
    mine, theirs = first / "coord" / "toil-mutex-m", second / "coord" / "toil-mutex-m"

    def hold_in_second(child: Forked) -> None:
        with toil_threading.global_mutex(second / "coord", "m"):
            child.say("held")
            child.hear(600)
        child.say("released")

    def take_in_first_release_in_second(child: Forked) -> None:
        os.chdir(first)
        held = toil_threading.global_mutex("coord", "m")
        held.__enter__()
        child.say("held")
        child.hear(60)
        os.chdir(second)
        held.__exit__(None, None, None)
        child.say("released")

    other = x = None
    try:
        other = Forked(hold_in_second)
        assert other.hear() == "held"
        x = Forked(take_in_first_release_in_second)
        assert x.hear() == "held"
        assert_locked_elsewhere(mine)
        before = snapshot(second)
        x.say("go")
        assert x.hear() == "released"
        assert x.wait() == 0
        assert_unchanged(second, before, "the other directory")
        assert not mine.exists(), "the mutex file was left where it was taken"
        assert contents(first / "coord") == []
        assert_locked_elsewhere(theirs)

        def try_to_take() -> str:
            try:
                with toil_threading.global_mutex(second / "coord", "m", timeout=0.2):
                    return "taken"
            except TimeoutError:
                return "timed out"

        assert in_child(try_to_take) == "timed out", "the other holder's mutex was let go"
        other.say("release")
        assert other.hear() == "released"
        assert other.wait() == 0
    finally:
        kill_all(x, other)


def test_an_arena_is_left_where_it_was_entered(core: str, siblings: tuple[Path, Path]) -> None:
    first, second = siblings

    def member_in_second(child: Forked) -> None:
        arena = toil_threading.LastProcessStandingArena(second / "coord", "pool")
        arena.enter(timeout=10)
        child.say(str(arena.lockfileName))
        child.hear(600)
        child.say(str(sum(1 for _ in arena.leave())))

    def enter_in_first_leave_in_second(child: Forked) -> None:
        os.chdir(first)
        arena = toil_threading.LastProcessStandingArena("coord", "pool")
        arena.enter(timeout=10)
        child.say(str(arena.lockfileName))
        child.hear(60)
        os.chdir(second)
        child.say(str(sum(1 for _ in arena.leave())))

    other = x = None
    try:
        other = Forked(member_in_second)
        theirs = second / "coord" / "pool-arena-members" / other.hear()
        assert_locked_elsewhere(theirs)
        x = Forked(enter_in_first_leave_in_second)
        mine = first / "coord" / "pool-arena-members" / x.hear()
        assert_locked_elsewhere(mine)
        before = snapshot(second)
        x.say("go")
        assert x.hear() == "1", "the only member of its arena was not the last one standing"
        assert x.wait() == 0
        assert contents(first / "coord") == [], "the arena was not cleaned where it was entered"
        assert_unchanged(second, before, "the other directory")
        assert_locked_elsewhere(theirs)
        other.say("leave")
        assert other.hear() == "1"
        assert other.wait() == 0
        assert contents(second / "coord") == []
    finally:
        kill_all(x, other)


def test_a_process_name_is_destroyed_where_it_was_made(
    core: str, siblings: tuple[Path, Path]
) -> None:
    first, second = siblings

    def name_in_first_destroy_in_second(child: Forked) -> None:
        os.chdir(first)
        child.say(toil_threading.get_process_name("coord"))
        child.hear(60)
        os.chdir(second)
        toil_threading.destroy_all_process_names()
        child.say("destroyed")

    x = None
    try:
        x = Forked(name_in_first_destroy_in_second)
        name = x.hear()
        mine = first / "coord" / name
        assert_locked_elsewhere(mine)
        # A file of the same name in the other directory: someone else's, not ours.
        (second / "coord" / name).write_bytes(b"not x's\n")
        before = snapshot(second)
        x.say("go")
        assert x.hear() == "destroyed"
        assert x.wait() == 0
        assert_unchanged(second, before, "the other directory")
        assert not mine.exists(), "the name file was left where it was made"
    finally:
        kill_all(x)
