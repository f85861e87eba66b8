"""Hostile directories, odd arguments and other users, on both cores.

Coordination directories are shared with other users and programs: they hold planted
links, FIFOs, sockets and foreign files.  Every test body runs in a forked child with a
time limit (`in_child`), so a hang fails the test instead of stalling the suite; the
child can drop to another user first, to share a directory with this one for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import gc
import json
import logging
import os
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from children import NOBODY, Forked, in_child
from conftest import (
    assert_locked_elsewhere,
    linux_only,
    needs_root,
    python_with_core,
    run_cli,
)

import toil_threading

pytestmark = linux_only


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A directory of someone else's files, named as the package names its own, unlocked
    and empty: what a followed link would let the package delete."""
    directory = tmp_path / "victim"
    directory.mkdir()
    for name in ("tmpaaaaaaaa", "tmpbbbbbbbb", "precious.txt"):
        (directory / name).touch()
    return directory


def contents(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# Links: never followed, nothing behind them removed.


def test_symlinked_members_directory_is_refused_at_enter(
    core: str, shared_dir: Path, victim: Path
) -> None:
    (shared_dir / "pool-arena-members").symlink_to(victim)

    def enter() -> tuple[int | None, str]:
        arena = toil_threading.LastProcessStandingArena(shared_dir, "pool")
        with pytest.raises(OSError) as raised:
            arena.enter(timeout=5)
        return raised.value.errno, str(raised.value.filename)

    assert in_child(enter) == (errno.ELOOP, str(shared_dir / "pool-arena-members"))
    assert contents(victim) == ["precious.txt", "tmpaaaaaaaa", "tmpbbbbbbbb"]


def test_members_directory_swapped_for_a_link_is_not_followed_at_leave(
    core: str, shared_dir: Path, victim: Path
) -> None:
    def enter_swap_leave() -> list[bool]:
        arena = toil_threading.LastProcessStandingArena(shared_dir, "pool")
        arena.enter()
        members = shared_dir / "pool-arena-members"
        members.rename(shared_dir / "moved-away")
        members.symlink_to(victim)  # another user plants it while we are inside
        return list(arena.leave())

    # The member leaves the directory it entered (kept open since), as the last one; the
    # link now at the members directory's name is neither followed nor removed.
    assert in_child(enter_swap_leave) == [True]
    assert contents(victim) == ["precious.txt", "tmpaaaaaaaa", "tmpbbbbbbbb"]
    assert (shared_dir / "pool-arena-members").is_symlink()
    assert contents(shared_dir / "moved-away") == []


@pytest.mark.parametrize("timeout", [None, 1.0])
def test_symlinked_mutex_file_is_refused(
    core: str, shared_dir: Path, victim: Path, timeout: float | None
) -> None:
    (shared_dir / "toil-mutex-m").symlink_to(victim / "precious.txt")

    def take() -> int | None:
        with (
            pytest.raises(OSError) as raised,
            toil_threading.global_mutex(shared_dir, "m", timeout=timeout),
        ):
            pass
        return raised.value.errno

    assert in_child(take) == errno.ELOOP
    assert contents(victim) == ["precious.txt", "tmpaaaaaaaa", "tmpbbbbbbbb"]


def test_symlinked_name_file_is_neither_followed_nor_removed(
    core: str, shared_dir: Path, victim: Path
) -> None:
    (shared_dir / "tmpzzzzzzzz").symlink_to(victim / "tmpaaaaaaaa")
    assert in_child(lambda: toil_threading.process_name_exists(shared_dir, "tmpzzzzzzzz")) is False
    assert (shared_dir / "tmpzzzzzzzz").is_symlink()
    assert contents(victim) == ["precious.txt", "tmpaaaaaaaa", "tmpbbbbbbbb"]


# Files that are not lock files: an error at once, never a blocked open.


def plant(kind: str, path: Path) -> object:
    """Put a FIFO, a listening socket or a directory at path; returns what keeps it alive."""
    if kind == "fifo":
        os.mkfifo(path)
        return None
    if kind == "directory":
        path.mkdir()
        return None
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()
    return listener


@pytest.mark.parametrize("timeout", [None, 5.0])
@pytest.mark.parametrize("kind", ["fifo", "socket", "directory"])
def test_non_file_at_the_lock_path_is_an_error_at_once(
    core: str, shared_dir: Path, kind: str, timeout: float | None
) -> None:
    keep = plant(kind, shared_dir / "toil-mutex-m")

    def take_while_a_thread_ticks() -> tuple[str, str, float, int]:
        ticks = 0
        stop = threading.Event()

        def tick() -> None:
            nonlocal ticks
            while not stop.wait(0.001):
                ticks += 1

        ticker = threading.Thread(target=tick)
        ticker.start()
        time.sleep(0.05)
        started = time.monotonic()
        try:
            with (
                pytest.raises(OSError) as raised,
                toil_threading.global_mutex(shared_dir, "m", timeout=timeout),
            ):
                pass
        finally:
            stop.set()
            ticker.join()
        return type(raised.value).__name__, str(raised.value), time.monotonic() - started, ticks

    kind_raised, message, seconds, ticks = in_child(take_while_a_thread_ticks, timeout=20)
    assert kind_raised == "OSError", kind_raised
    assert seconds < 1.0, f"{kind}: {seconds:.2f} s"
    assert str(shared_dir / "toil-mutex-m") in message
    assert "not a lock file" in message, message
    assert ticks > 10, "the other thread stood still"
    assert (shared_dir / "toil-mutex-m").exists() or kind == "socket"
    del keep


@pytest.mark.parametrize("kind", ["device", "fifo", "directory"])
def test_a_file_to_read_that_is_not_a_regular_file_is_an_error_at_once(
    core: str, shm_dir: Path, kind: str
) -> None:
    """cgroup files, mount tables and the files scheduler variables name are read whole:
    /dev/zero would never end, a FIFO say nothing.  Both are refused, by the public
    parsers with an OSError naming the file, and in an explanation as unreadable."""
    path = {"device": Path("/dev/zero"), "fifo": shm_dir / "fifo", "directory": shm_dir}[kind]
    if kind == "fifo":
        os.mkfifo(path)

    def read_them() -> tuple[str, str, object]:
        with pytest.raises(OSError) as raised:
            toil_threading.parse_quota_cgroups2(path)
        os.environ["_CONDOR_MACHINE_AD"] = str(path)  # in the child only
        htcondor = next(
            limit
            for limit in toil_threading.explain_cpu_count().limits
            if limit.source == "htcondor"
        )
        return str(raised.value), htcondor.detail, htcondor.cpus

    message, detail, cpus = in_child(read_them, timeout=20)
    assert message.startswith("[Errno 22] not a file to read: "), message
    assert str(path) in message
    assert cpus is None and detail == f"_CONDOR_MACHINE_AD={path} unreadable (not a regular file)"


def test_other_thread_runs_while_a_lock_wait_blocks(core: str, shm_dir: Path) -> None:
    def wait_in_the_kernel_while_a_thread_ticks() -> int:
        ticks = 0
        holder = toil_threading.global_mutex(shm_dir, "m")
        holder.__enter__()
        done = threading.Event()

        def wait() -> None:
            with toil_threading.global_mutex(shm_dir, "m"):  # blocks in flock until let go
                done.set()

        waiter = threading.Thread(target=wait)
        waiter.start()
        stop = time.monotonic() + 0.3
        while time.monotonic() < stop:
            ticks += 1
            time.sleep(0.001)
        assert not done.is_set()
        holder.__exit__(None, None, None)
        waiter.join(10)
        assert done.is_set()
        return ticks

    assert in_child(wait_in_the_kernel_while_a_thread_ticks) > 50


# Bounded retries: a directory that went away is an error at once, not a spin.


def test_removed_working_directory(core: str, tmp_path: Path) -> None:
    def in_a_removed_directory() -> list[tuple[str, str | None, float]]:
        gone = tmp_path / "gone"
        gone.mkdir()
        os.chdir(gone)
        gone.rmdir()
        found = []
        for attempt in (
            lambda: toil_threading.global_mutex(".", "m", timeout=0.5).__enter__(),
            lambda: toil_threading.global_mutex(".", "m").__enter__(),
            lambda: toil_threading.get_process_name("."),
            lambda: toil_threading.LastProcessStandingArena(".", "a").enter(timeout=0.5),
        ):
            started = time.monotonic(), time.process_time()
            try:
                attempt()
                found.append(("returned", None, 0.0))
            except OSError as error:
                cpu = time.process_time() - started[1]
                found.append((type(error).__name__, error.filename, cpu))
        return found

    for kind, filename, cpu in in_child(in_a_removed_directory, timeout=20):
        assert (kind, filename) == ("FileNotFoundError", "."), (kind, filename)
        assert cpu < 0.2, "it spun"


# Arguments: refused before the disk is touched.


@pytest.mark.parametrize("base_dir", ["", b"", b"/dev/shm"])
def test_empty_and_bytes_base_dirs(core: str, base_dir: Any, tmp_path: Path) -> None:
    expected = ValueError if base_dir == "" else TypeError

    def every_entry_point() -> list[str]:
        os.chdir(tmp_path)
        raised = []
        for call in (
            lambda: toil_threading.global_mutex(base_dir, "m"),
            lambda: toil_threading.get_process_name(base_dir),
            lambda: toil_threading.process_name_exists(base_dir, "tmpabcdefgh"),
            lambda: toil_threading.LastProcessStandingArena(base_dir, "a"),
        ):
            with pytest.raises(expected, match="base_dir") as error:
                call()
            raised.append(type(error.value).__name__)
        return raised

    assert in_child(every_entry_point) == [expected.__name__] * 4
    assert contents(tmp_path) == []


@pytest.mark.parametrize(
    "setting",
    [
        {"backoff": 1e300},
        {"max_backoff": float("inf")},
        {"max_tries": 2**40},
        {"backoff": float("nan")},
    ],
)
def test_unrepresentable_retry_settings(core: str, setting: dict[str, float]) -> None:
    before = toil_threading.lock_retry_policy()
    with pytest.raises(ValueError):
        toil_threading.set_lock_retry_policy(**setting)  # type: ignore[arg-type]
    assert toil_threading.lock_retry_policy() == before


@pytest.mark.parametrize("timeout", [1e300, float("inf")])
def test_unrepresentable_timeouts(core: str, shm_dir: Path, timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        toil_threading.global_mutex(shm_dir, "m", timeout=timeout)
    with pytest.raises(ValueError, match="timeout"):
        toil_threading.LastProcessStandingArena(shm_dir, "a").enter(timeout=timeout)
    with pytest.raises(ValueError, match="timeout"):
        toil_threading.safe_lock(0, timeout=timeout)
    assert contents(shm_dir) == []


# Foreign entries in a members directory: never counted, never removed.


def test_foreign_entries_in_a_members_directory(core: str, shm_dir: Path) -> None:
    members = shm_dir / "pool-arena-members"

    def plant_then_cycle() -> list[int]:
        arena = toil_threading.LastProcessStandingArena(shm_dir, "pool")
        arena.enter()
        (members / "tmpsubdirxx").mkdir()
        os.mkfifo(members / "tmpfifoxxxx")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(members / "tmpsockxxxx"))
        (members / "tmplinkxxxx").symlink_to("/etc/passwd")
        (members / "tmpdataxxxx").write_text("someone's data")  # named like ours, not empty
        (members / "notours.txt").touch()
        cleanups = []
        for _ in range(3):
            cleanups.append(sum(1 for _ in arena.leave()))
            arena.enter()
        cleanups.append(sum(1 for _ in arena.leave()))
        listener.close()
        return cleanups

    assert in_child(plant_then_cycle) == [1, 1, 1, 1]
    assert contents(members) == [
        "notours.txt",
        "tmpdataxxxx",
        "tmpfifoxxxx",
        "tmplinkxxxx",
        "tmpsockxxxx",
        "tmpsubdirxx",
    ]


# Lifetime: a dropped held mutex lets go; so does an asyncio wait that was cancelled.


def test_a_dropped_entered_mutex_lets_go(core: str, shm_dir: Path) -> None:
    def enter_then_drop() -> bool:
        held = toil_threading.global_mutex(shm_dir, "m")
        held.__enter__()
        assert_locked_elsewhere(shm_dir / "toil-mutex-m")
        del held
        gc.collect()
        return (shm_dir / "toil-mutex-m").exists()

    # Collected, it closed its descriptor: the mutex is free, its file left for the next
    # holder, who removes it.
    assert in_child(enter_then_drop) is True
    with toil_threading.global_mutex(shm_dir, "m", timeout=0):
        pass
    assert not (shm_dir / "toil-mutex-m").exists()


def test_asyncio_wait_for_a_mutex_that_times_out_leaves_nothing_held(
    core: str, shm_dir: Path
) -> None:
    holder = python_with_core(
        core,
        "import sys, toil_threading\n"
        f"with toil_threading.global_mutex({str(shm_dir)!r}, 'm'):\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.readline()\n",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"

    def cancelled_wait() -> str:
        async def main() -> str:
            loop = asyncio.get_running_loop()
            held = toil_threading.global_mutex(shm_dir, "m")
            try:
                await asyncio.wait_for(loop.run_in_executor(None, held.__enter__), 0.2)
            except asyncio.TimeoutError:
                return "timed out"
            return "acquired"

        outcome = asyncio.run(main())  # waits for the executor: it got the mutex, then dropped it
        gc.collect()
        return outcome

    try:
        answer: list[str] = []
        waiter = threading.Thread(target=lambda: answer.append(in_child(cancelled_wait)))
        waiter.start()
        time.sleep(0.5)
        holder.communicate("\n", timeout=30)  # the holder lets go; the executor thread takes it
        waiter.join(30)
    finally:
        holder.kill()
        holder.wait()
    assert answer == ["timed out"]
    with toil_threading.global_mutex(shm_dir, "m", timeout=5):
        pass
    assert contents(shm_dir) == []


def test_asyncio_polling_with_timeout_zero(core: str, shm_dir: Path) -> None:
    async def take(results: list[str]) -> None:
        while True:
            try:
                with toil_threading.global_mutex(shm_dir, "m", timeout=0):
                    results.append("in")
                    await asyncio.sleep(0.01)
                    results.append("out")
                    return
            except TimeoutError:
                await asyncio.sleep(0.001)

    async def main() -> list[str]:
        results: list[str] = []
        await asyncio.gather(*(take(results) for _ in range(3)))
        return results

    # Exclusion holds between the tasks of one thread: each acquisition is its own file.
    assert in_child(lambda: asyncio.run(main())) == ["in", "out"] * 3


# Release paths are exception-safe: whatever a log line raises, the lock is let go.


def test_a_failing_log_line_at_release_still_lets_go(core: str, shm_dir: Path) -> None:
    def release_with_a_raising_filter() -> tuple[str, bool, int]:
        class Explode(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                raise RuntimeError("the logging configuration is broken")

        logging.getLogger("toil_threading").addFilter(Explode())
        before = len(os.listdir("/proc/self/fd"))
        held = toil_threading.global_mutex(shm_dir, "m")
        held.__enter__()
        os.unlink(shm_dir / "toil-mutex-m")  # someone outside the protocol: release logs it
        (shm_dir / "toil-mutex-m").touch()
        try:
            held.__exit__(None, None, None)
            outcome = "returned"
        except RuntimeError as error:
            outcome = str(error)
        fd = os.open(shm_dir / "toil-mutex-m", os.O_RDONLY)
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            free = True
        except BlockingIOError:
            free = False
        finally:
            os.close(fd)
        return outcome, free, len(os.listdir("/proc/self/fd")) - before

    outcome, free, leaked = in_child(release_with_a_raising_filter)
    assert outcome == "the logging configuration is broken"
    assert free and leaked == 0


# Bounded memory: many short-lived directories leave nothing behind in the process.


def test_many_short_lived_directories_keep_memory_flat(core: str, tmp_path: Path) -> None:
    def use_many_directories() -> int:
        import tracemalloc

        def use(index: int) -> None:
            directory = tmp_path / f"d{index}"
            directory.mkdir()
            with toil_threading.global_mutex(directory, "m"):
                pass
            arena = toil_threading.LastProcessStandingArena(directory, "a")
            arena.enter()
            list(arena.leave())
            toil_threading.process_name_exists(directory, "tmpnotthere")
            directory.rmdir()

        for index in range(50):
            use(index)
        gc.collect()
        tracemalloc.start()
        first = tracemalloc.take_snapshot()
        for index in range(50, 1050):
            use(index)
        gc.collect()
        grown = tracemalloc.take_snapshot().compare_to(first, "filename")
        return sum(d.size_diff for d in grown if "toil_threading" in str(d.traceback))

    assert in_child(use_many_directories, timeout=60) < 8192


# Threads: each acquisition opens its own file description, so threads exclude too.


def test_threads_exclude_each_other(core: str, shm_dir: Path) -> None:
    def hammer_from_threads() -> int:
        inside = 0
        worst = 0

        def work() -> None:
            nonlocal inside, worst
            for _ in range(200):
                with toil_threading.global_mutex(shm_dir, "m"):
                    inside += 1
                    worst = max(worst, inside)
                    time.sleep(0)
                    inside -= 1

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return worst

    assert in_child(hammer_from_threads, timeout=60) == 1


# Two real users in one sticky (1777) or group-shared setgid (2775) directory.


def hold_the_mutex(directory: Path) -> Callable[[Forked], None]:
    def body(child: Forked) -> None:
        with toil_threading.global_mutex(directory, "m"):
            child.say("held")
            child.hear(600)

    return body


@pytest.mark.parametrize("first", ["root", "nobody"])
def test_two_users_exclude_each_other_on_one_mutex(core: str, shared_dir: Path, first: str) -> None:
    needs_root()
    users = {"root": None, "nobody": NOBODY}
    second = "nobody" if first == "root" else "root"
    holder = Forked(hold_the_mutex(shared_dir), users[first])
    try:
        assert holder.hear() == "held"

        def try_to_take() -> str:
            try:
                with toil_threading.global_mutex(shared_dir, "m", timeout=0.3):
                    return "taken"
            except TimeoutError:
                return "excluded"

        assert in_child(try_to_take, user=users[second], umask=0o022) == "excluded"
    finally:
        holder.kill()  # dies holding: its file (mode 0644) stays behind
    owner = (shared_dir / "toil-mutex-m").stat().st_uid
    assert owner == (0 if first == "root" else NOBODY[0])

    def take_and_release() -> str:
        with toil_threading.global_mutex(shared_dir, "m", timeout=5):
            pass
        return "taken and released"

    # The other user's leftover is opened read-only and locked; the sticky bit may refuse
    # the unlink at release, which is not the caller's error.
    assert in_child(take_and_release, user=users[second], umask=0o022) == "taken and released"
    assert in_child(take_and_release, user=users[first], umask=0o022) == "taken and released"


def test_two_users_see_each_others_names(core: str, shared_dir: Path) -> None:
    needs_root()

    def own_a_name(child: Forked) -> None:
        child.say(toil_threading.get_process_name(shared_dir))
        child.hear(600)

    owner = Forked(own_a_name, NOBODY)
    try:
        theirs = owner.hear()
        assert theirs.startswith("tmp")
        assert in_child(lambda: toil_threading.process_name_exists(shared_dir, theirs))
        mine = in_child(lambda: toil_threading.get_process_name(shared_dir))  # dies with the child
        assert (
            in_child(lambda: toil_threading.process_name_exists(shared_dir, mine), user=NOBODY)
            is False
        )
    finally:
        owner.kill()
    assert in_child(lambda: toil_threading.process_name_exists(shared_dir, theirs)) is False
    assert not (shared_dir / theirs).exists()


@pytest.mark.parametrize("mode,umask", [(0o1777, 0o000), (0o2775, 0o002)])
def test_two_users_share_an_arena(core: str, open_parent: Path, mode: int, umask: int) -> None:
    needs_root()
    directory = open_parent / "group"
    directory.mkdir()
    os.chown(directory, 0, NOBODY[1])
    directory.chmod(mode)

    def member(child: Forked) -> None:
        arena = toil_threading.LastProcessStandingArena(directory, "pool")
        arena.enter(timeout=10)
        child.say("entered")
        child.hear(600)
        child.say(str(sum(1 for _ in arena.leave())))

    members = [Forked(member, user, umask) for user in (None, NOBODY, None, NOBODY)]
    try:
        assert [each.hear() for each in members] == ["entered"] * 4
        members[2].kill()  # one dies inside: its file is dead, not alive
        cleanups = []
        for each in (members[0], members[1], members[3]):
            each.say("leave")
            cleanups.append(int(each.hear()))
            assert each.wait() == 0
    finally:
        for each in members:
            each.kill()
    assert cleanups == [0, 0, 1]
    # Others may write to the members directory, so it is sticky: nobody (the last to
    # leave) may not remove root's dead member, which it judged dead from /proc/locks; it
    # stays, unlocked, unless root's own leave met it first, and so may the directory.
    members = directory / "pool-arena-members"
    if contents(directory):
        assert contents(directory) == ["pool-arena-members"]
        assert members.stat().st_mode & stat.S_ISVTX
        for name in contents(members):
            assert (members / name).stat().st_uid == 0
            with open(members / name) as left:
                fcntl.flock(left, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody holds it


def test_joining_an_arena_the_umask_closed_names_the_directory(core: str, shared_dir: Path) -> None:
    needs_root()

    def enter() -> str:
        arena = toil_threading.LastProcessStandingArena(shared_dir, "closed")
        try:
            arena.enter(timeout=5)
        except PermissionError as error:
            return f"{error.filename}: {error.strerror}"
        return "entered"

    # Root's members directory under umask 022 is 0755: nobody may not add to it.
    assert in_child(enter, umask=0o022) == "entered"  # root stays a (dead) member
    assert in_child(enter, user=NOBODY, umask=0o022) == (
        f"{shared_dir / 'closed-arena-members'}: Permission denied"
    )


# The command line in hostile directories.


def test_inspect_shows_undecodable_names_escaped(core: str, shm_dir: Path) -> None:
    raw = os.fsencode(shm_dir) + b"/toil-mutex-caf\xe9"
    os.close(os.open(raw, os.O_CREAT | os.O_WRONLY))
    strict = {"PYTHONIOENCODING": "utf-8:strict"}
    table = run_cli(core, "inspect", shm_dir, env=strict)
    assert (table.returncode, table.stderr) == (0, "")
    assert table.stdout.split()[5:8] == ["mutex", "caf\\xe9", "free"]
    done = run_cli(core, "inspect", "--json", shm_dir, env=strict)
    assert (done.returncode, done.stderr) == (0, "")
    [mutex] = json.loads(done.stdout)["mutexes"]
    assert mutex["name"] == "caf\\xe9" and mutex["path"].endswith("toil-mutex-caf\\xe9")


def test_inspect_as_another_user_reports_what_it_can(core: str, shared_dir: Path) -> None:
    # (run in a forked child as nobody: another user may not be able to start this Python)
    needs_root()
    # Root's files, unreadable to others: a dead name, a member of a closed arena.
    name = shared_dir / "tmpsecret00"
    name.touch()
    name.chmod(0o600)
    closed = shared_dir / "locked-arena-members"
    closed.mkdir(mode=0o700)
    (closed / "tmpmember00").touch()
    mutex = shared_dir / "toil-mutex-open"
    mutex.touch()
    mutex.chmod(0o644)

    def inspect() -> tuple[int, str]:
        import io

        from toil_threading import _cli

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = _cli.main(["inspect", "--json", str(shared_dir)])
        return status, out.getvalue()

    status, out = in_child(inspect, user=NOBODY)
    assert status == 0
    report = json.loads(out)
    assert [(item["name"], item["state"]) for item in report["names"]] == [
        ("tmpsecret00", "unknown: permission denied")
    ]
    assert [(arena["name"], arena["state"]) for arena in report["arenas"]] == [
        ("locked", "unknown: permission denied")
    ]
    assert [(item["name"], item["state"]) for item in report["mutexes"]] == [("open", "free")]
    assert name.exists() and (closed / "tmpmember00").exists()


def test_clean_removes_only_empty_dead_files_of_ours(core: str, shm_dir: Path) -> None:
    (shm_dir / "tmpemptyxxx").touch()  # a dead name: removed
    (shm_dir / "tmpdataxxxx").write_text("keep me")  # named like ours, holds data: kept
    (shm_dir / "notaname").touch()  # not named like ours: kept
    members = shm_dir / "pool-arena-members"
    members.mkdir()
    (members / "tmpmemberxx").touch()  # a dead member: removed
    (members / "tmpmemdataxx"[:11]).write_text("data")  # named like ours, holds data: kept
    done = run_cli(core, "inspect", "--clean", shm_dir)
    assert done.returncode == 0, done.stderr
    assert contents(shm_dir) == ["notaname", "pool-arena-members", "tmpdataxxxx"]
    assert contents(members) == ["tmpmemdatax"]
    assert (shm_dir / "tmpdataxxxx").read_text() == "keep me"
