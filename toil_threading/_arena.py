"""The last-process-standing arena: the last process to leave gets to clean up."""

import os
import stat

from . import _checks, _errors, _impl
from ._errors import LockTimeout
from ._lockability import lock_flags_for
from ._names import judge_unopenable
from ._protocol import (
    ALIVE,
    ARENA_MEMBERS_SUFFIX,
    ARENA_MUTEX_SUFFIX,
    DENIED,
    MEMBERS_DIRECTORY_MODE,
    MUTEX_PREFIX,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

    from ._checks import StrPath
    from ._core_py import Directory, Held


class LastProcessStandingArena:
    """Lets a group of processes elect the last one standing to clean up.

    Processes enter and leave, some by dying suddenly.  The last process to leave
    properly gets to do the cleanup; processes entering meanwhile wait until it is done
    and that process has finished leaving.  Always leave after entering (try/finally):
    this is not a context manager.

    On disk: members are locked files in ``base_dir/<name>-arena-members/``; entering
    and leaving are serialised by the mutex ``<name>-arena-lock`` in base_dir.  A member
    keeps base_dir open from its entry, so it leaves the arena it entered whatever the
    working directory is by then.
    """

    def __init__(self, base_dir: "StrPath", name: str) -> None:
        base_dir = _checks.path(base_dir)
        longest = max(len(MUTEX_PREFIX + ARENA_MUTEX_SUFFIX), len(ARENA_MEMBERS_SUFFIX))
        _checks.name(name, "arena name", longest)
        self.base_dir = base_dir
        self.name = name
        self.mutex = name + ARENA_MUTEX_SUFFIX
        self.lockfileDir = os.path.join(base_dir, name + ARENA_MEMBERS_SUFFIX)
        # This process's member file while it is in the arena; it keeps the members
        # directory open, and _base keeps base_dir open, from the entry on.
        self._member: Held | None = None
        self._base: Directory | None = None

    @property
    def lockfileFD(self) -> int | None:
        """The member file's descriptor while this process is in the arena, else None."""
        return self._member.fd if self._member is not None and self._member.held else None

    @property
    def lockfileName(self) -> str | None:
        """The member file's name while this process is in the arena, else None."""
        return self._member.name if self._member is not None and self._member.held else None

    def enter(self, *, timeout: float | None = None) -> None:
        """Enter the arena; if cleanup is under way, wait until it is finished.

        You may not enter again before leaving.  With ``timeout`` (seconds) on the wait
        for the arena's mutex, LockTimeout (a TimeoutError) if not had in time.
        """
        _checks.seconds(timeout, "timeout")
        if self.lockfileFD is not None:
            raise RuntimeError(f"this process is already in the arena {self.name!r}")
        self._base = base = _impl.core.Directory(self.base_dir)
        try:
            with _impl.core.HeldMutex(base, MUTEX_PREFIX + self.mutex, timeout, lock_flags_for):
                members = _impl.core.Directory(
                    self.name + ARENA_MEMBERS_SUFFIX, base, MEMBERS_DIRECTORY_MODE
                )
                try:
                    _keep_members_apart(members)
                    self._member = _impl.core.Held(members, lock_flags_for)
                except BaseException:
                    # Nobody else entered meanwhile (the mutex is ours): a members
                    # directory this entry made goes again, quietly where it cannot (a
                    # member file an interrupt left there is a dead member, for later).
                    if members.created:
                        try:
                            _remove_if_ours(base, members)
                        except OSError:
                            pass
                    members.close()
                    raise
        except BaseException as failure:
            if self.lockfileFD is None:
                base.close()
            if isinstance(failure, LockTimeout):
                failure.name = self.name  # the arena's, not its mutex's
            raise

    def leave(self, *, timeout: float | None = None) -> "Iterator[bool]":
        """Leave the arena; yields once if this process is the last one standing.

        The loop body runs while the arena's mutex is held, so nobody enters before the
        cleanup is done::

            for _ in arena.leave():
                ...  # we were the last process: clean up

        With ``timeout`` (seconds) on the wait for the arena's mutex, LockTimeout (a
        TimeoutError) if not had in time: this process is then still in the arena, and
        may leave again.
        """
        _checks.seconds(timeout, "timeout")
        member, base = self._member, self._base
        if member is None or base is None or not member.held:
            raise RuntimeError(f"this process is not in the arena {self.name!r}")
        # No try, finally or with spans the yield: a generator dropped there (its caller
        # interrupted or gone) is only cleared, and its mutex closed by C code, so no line
        # of Python runs as it is collected.  Any failure lets the mutex go the same way.
        mutex = _impl.core.HeldMutex(base, MUTEX_PREFIX + self.mutex, timeout, lock_flags_for)
        try:
            mutex.__enter__()
        except LockTimeout as failure:
            failure.name = self.name  # the arena's, not its mutex's
            raise
        member.release()
        self._member = None
        if not _anyone_alive(member.directory):
            yield True
            _remove_members_directory(base, member.directory)
        mutex.__exit__(None, None, None)
        member.directory.close()
        base.close()


def _keep_members_apart(members: "Directory") -> None:
    """A members directory that others may write to gets the sticky bit, so that nobody
    removes another's member file (and with it, a live member) but its owner.  One this
    user does not own and cannot change is warned about once per entry."""
    info = os.fstat(members.fd)
    if not info.st_mode & 0o022 or info.st_mode & stat.S_ISVTX:
        return
    if info.st_uid == os.geteuid():
        # Through the descriptor's own name in /proc (an O_PATH descriptor takes no fchmod):
        # the directory held, whatever is at its name now.
        os.chmod(f"/proc/self/fd/{members.fd}", stat.S_IMODE(info.st_mode) | stat.S_ISVTX)
    else:
        _errors.log(
            30,
            "the members directory %s may be written by others and has no sticky bit: another"
            " user can remove a live member's file there",
            members.path,
        )


def _anyone_alive(members: "Directory") -> bool:
    """Whether a member other than us lives: the dead members are removed on the way.
    Another user's member file, which only its owner can open, is judged from /proc/locks
    (and counted alive where that cannot tell)."""
    found = _impl.core.scan(members, True, True, lock_flags_for)
    for name, state in found:
        if state == ALIVE:
            return True
        if state == DENIED:
            try:
                if judge_unopenable(members, name) == ALIVE:
                    return True
            except PermissionError:
                _errors.log(
                    30,
                    "cannot tell whether the member %s/%s is alive (another user's file on a"
                    " filesystem shared between machines): counting it as alive, so no"
                    " cleanup now",
                    members.path,
                    name,
                )
                return True
    return False


def _remove_members_directory(base: "Directory", members: "Directory") -> None:
    """Remove the members directory after the cleanup (see _remove_if_ours); what
    prevents it is a warning."""
    try:
        _remove_if_ours(base, members)
    except FileNotFoundError:
        pass
    except OSError as error:
        _errors.log(30, "could not remove the arena directory %s: %s", members.path, error)


def _remove_if_ours(base: "Directory", members: "Directory") -> None:
    """Remove the members directory if the entry at its name is still the directory held
    open (device and inode) and it is empty (rmdir removes nothing else)."""
    name = os.path.basename(members.path)
    found = os.stat(name, dir_fd=base.fd, follow_symlinks=False)
    held = os.fstat(members.fd)
    if (found.st_dev, found.st_ino) == (held.st_dev, held.st_ino):
        os.rmdir(name, dir_fd=base.fd)  # else another directory took its name: not ours
