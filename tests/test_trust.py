"""Another user sharing the directory can deny service, but never fake liveness.

The promises (the README's trust model): another user can never make a dead name or
member read alive, nor make an arena's cleanup run under a live member or twice.  How
they are kept: name and member files are created mode 0600, so another user cannot open
one to lock it; a members directory that group or others may write gets the sticky bit,
so another user cannot remove a member's file; and a probe that cannot open another
user's file judges it from the kernel's lock table (/proc/locks) on a local filesystem.

Root and the user nobody share a sticky world-writable (1777) directory on tmpfs; every
step runs in a forked child with a time limit, as the user named.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import stat
import sys
from pathlib import Path

import pytest
from children import NOBODY, Forked, in_child
from conftest import linux_only, needs_root

import toil_threading

pytestmark = linux_only


def try_to_hold(path: Path) -> Forked:
    """A child, as nobody, that tries to open path and flock it exclusively; it says
    "refused <errno name>" if it cannot open it, else "held" and holds the lock until
    killed (or "busy" if another holds it)."""

    def body(child: Forked) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as error:
            child.say(f"refused {errno.errorcode[error.errno]}")
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            child.say("busy")
            return
        child.say("held")
        child.hear(600)

    return Forked(body, NOBODY)


def test_a_child_as_another_user_needs_to_read_no_file(core: str, shared_dir: Path) -> None:
    """What every test here rests on: a child acting as nobody, who may be unable to read
    this interpreter or the installed package (both can lie in a home or a checkout only
    their owner may enter), still loads every public name of the package, runs its calls
    and its command line."""
    needs_root()

    def use_the_package_reading_no_file() -> tuple[object, ...]:
        sys.path.clear()  # from here on, no file can be imported: as where nobody may read none
        toil_threading.__path__.clear()
        missing = [name for name in toil_threading.__all__ if not hasattr(toil_threading, name)]
        from toil_threading import _cli

        report = io.StringIO()
        with contextlib.redirect_stdout(report):
            status = _cli.main(["inspect", "--json", str(shared_dir)])
        return (
            missing,
            toil_threading.process_name_exists(shared_dir, "tmpnotaname"),
            toil_threading.cpu_count() == toil_threading.explain_cpu_count().count,
            toil_threading.filesystem_report(shared_dir).type,
            status,
            json.loads(report.getvalue())["names"],
        )

    assert in_child(use_the_package_reading_no_file, user=NOBODY) == (
        [],
        False,
        True,
        toil_threading.filesystem_report(shared_dir).type,
        0,
        [],
    )


def test_a_foreign_flock_cannot_keep_a_dead_name_alive(core: str, shared_dir: Path) -> None:
    """Promise: another user cannot make a dead process name read alive.  Root's process
    takes a name and dies without cleaning up; nobody tries to lock the name file (it
    cannot even open it, mode 0600); root's process_name_exists says the name is dead."""
    needs_root()
    # The child returns, then leaves with os._exit: its name file stays, unlocked.
    name = in_child(lambda: toil_threading.get_process_name(shared_dir), umask=0o000)
    assert (shared_dir / name).exists()
    intruder = try_to_hold(shared_dir / name)
    try:
        attempt = intruder.hear()
        exists = in_child(lambda: toil_threading.process_name_exists(shared_dir, name))
    finally:
        intruder.kill()
    assert (exists, attempt) == (False, "refused EACCES")


def test_a_foreign_flock_cannot_keep_a_dead_member_in_the_arena(
    core: str, shared_dir: Path
) -> None:
    """Promise: another user cannot make a dead arena member read alive, so cannot stop
    the cleanup.  Root's member enters 'pool' and dies; nobody tries to lock its file;
    another root member enters and leaves, and is told it is the last (cleanup once)."""
    needs_root()

    def enter_and_die() -> str:
        arena = toil_threading.LastProcessStandingArena(shared_dir, "pool")
        arena.enter(timeout=10)
        assert arena.lockfileName is not None
        return arena.lockfileName  # the child ends with os._exit, still "inside"

    member = in_child(enter_and_die, umask=0o000)
    intruder = try_to_hold(shared_dir / "pool-arena-members" / member)
    try:
        attempt = intruder.hear()

        def enter_and_leave() -> int:
            arena = toil_threading.LastProcessStandingArena(shared_dir, "pool")
            arena.enter(timeout=10)
            return sum(1 for _ in arena.leave())

        cleanups = in_child(enter_and_leave, umask=0o000)
    finally:
        intruder.kill()
    assert (cleanups, attempt) == (1, "refused EACCES")


def test_another_user_cannot_delete_live_members_of_a_shared_arena(
    core: str, shared_dir: Path
) -> None:
    """Promise: another user cannot make an arena's cleanup run under a live member (by
    deleting live members' files) nor twice.  Two root members enter under umask 000 in
    a 1777 directory: the members directory gets the sticky bit; nobody's unlink of each
    member file fails with EPERM; the first to leave is not told it is last, the second is,
    exactly once."""
    needs_root()
    members_dir = shared_dir / "pool-arena-members"

    def member(child: Forked) -> None:
        arena = toil_threading.LastProcessStandingArena(shared_dir, "pool")
        arena.enter(timeout=10)
        child.say(str(arena.lockfileName))
        child.hear(600)
        try:
            child.say(str(sum(1 for _ in arena.leave())))
        except OSError as error:  # told, not raised: the assertion shows every step
            child.say(f"{type(error).__name__} {errno.errorcode[error.errno]}")

    members = [Forked(member, None, 0o000) for _ in range(2)]
    try:
        names = [each.hear() for each in members]
        sticky = bool(members_dir.stat().st_mode & stat.S_ISVTX)

        def unlink_them() -> list[str]:
            refused = []
            for name in names:
                try:
                    os.unlink(members_dir / name)
                    refused.append("removed")
                except OSError as error:
                    refused.append(errno.errorcode[error.errno])
            return refused

        refused = in_child(unlink_them, user=NOBODY)
        cleanups: list[int | str] = []
        for each in members:
            each.say("leave")
            told = each.hear()
            cleanups.append(int(told) if told.isdigit() else told)
            assert each.wait() == 0
    finally:
        for each in members:
            each.kill()
    assert (sticky, refused, cleanups) == (True, ["EPERM", "EPERM"], [0, 1])


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_name_and_member_files_are_private(core: str, shared_dir: Path, umask: int) -> None:
    """Promise kept by: name and member files are mode 0600 whatever the umask, so no
    other user can open one (to lock it, or to read it)."""

    def modes() -> tuple[int, int]:
        name = toil_threading.get_process_name(shared_dir)
        arena = toil_threading.LastProcessStandingArena(shared_dir, "pool")
        arena.enter(timeout=10)
        member = Path(arena.lockfileDir) / str(arena.lockfileName)
        found = (
            stat.S_IMODE((shared_dir / name).stat().st_mode),
            stat.S_IMODE(member.stat().st_mode),
        )
        list(arena.leave())
        return found

    name_mode, member_mode = in_child(modes, umask=umask)
    assert (oct(name_mode), oct(member_mode)) == ("0o600", "0o600")


def test_another_user_tells_a_live_name_from_a_dead_one(core: str, shared_dir: Path) -> None:
    """Promise: a name another user cannot open is still judged right, from the kernel's
    lock table: nobody sees root's live name alive, and dead once its process is gone."""
    needs_root()

    def own_a_name(child: Forked) -> None:
        child.say(toil_threading.get_process_name(shared_dir))
        child.hear(600)

    owner = Forked(own_a_name, None, 0o000)
    try:
        name = owner.hear()
        alive = in_child(lambda: toil_threading.process_name_exists(shared_dir, name), user=NOBODY)
    finally:
        owner.kill()  # dies holding its name: the file stays, unlocked
    dead = in_child(lambda: toil_threading.process_name_exists(shared_dir, name), user=NOBODY)
    assert (alive, dead) == (True, False)
