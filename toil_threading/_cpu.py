"""cpu_count(): how many whole CPUs this process may use, and why.

Every source that can limit the count is asked and answers with a CpuLimit
(toil_threading._cpu_limits): the online CPUs, the affinity mask, the cgroups
(toil_threading._cgroups), a batch scheduler (toil_threading._schedulers, loaded only in a
job) and the PYTHON_CPU_COUNT / -X cpu_count override.  The count is the override where
one is in force, otherwise the smallest figure, at least 1.

The walk is written once, over a probe: the live process, or a system captured under
another root (toil_threading._captured), where everything is read from files beneath it.
The probe remembers every question it asked and the answer, so cpu_count() can ask them
again once a second and walk anew only when an answer changed.
"""

import os
import sys
from time import monotonic

from . import _cgroups, _impl
from ._cpu_limits import OUTSIDE_ANY_JOB, CpuCount, CpuLimit, unreadable
from ._protocol import MALFORMED, NOT_REGULAR, TABLE_FILE_BYTES, WORKING_DIRECTORY

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeAlias

    from ._captured import CapturedProbe
    from ._checks import StrPath

    AnyProbe: TypeAlias = "_LiveProbe | CapturedProbe"
    Seen: TypeAlias = "list[tuple[Callable[..., Any], tuple[Any, ...], Any]]"

# How long cpu_count() answers from memory before asking its questions again.
RECHECK_SECONDS = 1.0


def _getenv(name: str) -> str | None:
    """os.environ.get(name), made cheap for the unset names a walk mostly asks about.

    os.environ.get raises and catches KeyError twice for an unset name, about 1 us on a
    slow machine, and a walk asks for seven names, most of them unset; the dict behind
    os.environ (bytes on POSIX, always in step with it) answers a miss in 20 ns.
    """
    data = getattr(os.environ, "_data", None)
    if data is None:  # os.environ replaced by a plain mapping
        return os.environ.get(name)
    value = data.get(name.encode())
    return None if value is None else os.fsdecode(value)


# The variables that say a scheduler's job is running (each scheduler reads more).
JOB_VARIABLES = (
    "SLURM_JOB_ID",
    "SLURM_JOBID",
    "PBS_JOBID",
    "JOB_ID",
    "LSB_JOBID",
    "_CONDOR_MACHINE_AD",
)
_JOB_KEYS = tuple(name.encode() for name in JOB_VARIABLES)


def _in_a_job_now() -> bool:
    """Whether any of JOB_VARIABLES is set (and not empty), in one question: a walk
    outside a job asks nothing more of the environment for the schedulers."""
    data = getattr(os.environ, "_data", None)
    if data is None:  # os.environ replaced by a plain mapping
        return any(os.environ.get(name) for name in JOB_VARIABLES)
    return any(data.get(key) for key in _JOB_KEYS)


def _online_now() -> int:
    return os.sysconf("SC_NPROCESSORS_ONLN")


def _affinity_now() -> int:
    return len(os.sched_getaffinity(0))


def _cpu_count_option_now() -> object:
    return sys._xoptions.get("cpu_count")


def _hostname_now() -> str:
    return os.uname().nodename


class Probe:
    """What the walk asks: the live process, or a system captured beneath a directory.

    Files are read by the cores relative to ``directory`` (WORKING_DIRECTORY for the live
    process, whose paths are absolute; a captured root's descriptor, beneath which paths
    are relative).  Every question and its answer are kept in ``seen``, as (function,
    arguments, answer), so that asking them again tells whether anything the answer
    rests on has changed.
    """

    __slots__ = ("directory", "live", "seen")

    def __init__(self, directory: int) -> None:
        self.directory = directory
        self.live = directory == WORKING_DIRECTORY
        self.seen: Seen = []

    def remember(
        self, function: "Callable[..., Any]", arguments: "tuple[Any, ...]", answer: object
    ) -> None:
        """Keep a question asked without ask() (see _cgroups._mount)."""
        self.seen.append((function, arguments, answer))

    def ask(self, function: "Callable[..., Any]", *arguments: object) -> "Any":
        answer = function(*arguments)
        self.seen.append((function, arguments, answer))
        return answer

    def beneath(self, path: str) -> str:
        """An absolute path of the system as the cores take it under this probe's directory."""
        return path if self.live else path.lstrip("/") or "."

    def read(self, function: "Callable[..., Any]", path: str, *more: object) -> "Any":
        """A core's reader (read_bounded, cpu_max, ...) on the file at path: its answer."""
        return self.ask(function, self.directory, self.beneath(path), *more)

    def read_named(self, path: str) -> str | int:
        """The file a variable names (beneath a captured root too): its text, or why not."""
        reason: int
        text: str
        reason, text = self.read(_impl.core.read_bounded, path, TABLE_FILE_BYTES)
        return reason or text


class _LiveProbe(Probe):
    """This process, through the system calls and the interpreter's own settings.

    Besides read(), both probes answer env(name), machine(), affinity(), hostname() and
    interpreter(): (-X cpu_count's value or None, whether the environment is ignored).
    """

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(WORKING_DIRECTORY)

    def env(self, name: str) -> str | None:
        return self.ask(_getenv, name)  # type: ignore[no-any-return]

    def in_a_job(self) -> bool:
        return self.ask(_in_a_job_now)  # type: ignore[no-any-return]

    def machine(self) -> CpuLimit:
        online = self.ask(_online_now)
        if online < 1:
            return CpuLimit("machine", None, "sysconf(_SC_NPROCESSORS_ONLN) gave no count")
        return CpuLimit("machine", online, "online CPUs, from sysconf(_SC_NPROCESSORS_ONLN)")

    def affinity(self) -> CpuLimit:
        if not hasattr(os, "sched_getaffinity"):
            return CpuLimit("affinity", None, "no affinity mask on this platform")
        allowed = self.ask(_affinity_now)
        why = "this process's affinity mask, from sched_getaffinity"
        return CpuLimit("affinity", allowed, why)

    def interpreter(self) -> tuple[object, bool]:
        return self.ask(_cpu_count_option_now), bool(sys.flags.ignore_environment)

    def hostname(self) -> str:
        return self.ask(_hostname_now)  # type: ignore[no-any-return]


# -- The override ----------------------------------------------------------------------

_NO_OVERRIDE = CpuLimit(
    "override", None, "PYTHON_CPU_COUNT is not set and there is no -X cpu_count"
)
_EMPTY_OVERRIDE = CpuLimit(
    "override", None, "PYTHON_CPU_COUNT is empty and there is no -X cpu_count"
)
_INT_MAX = 2**31 - 1
# What C's isspace() takes as a blank, which strtol skips before the number.
_C_BLANKS = " \t\n\v\f\r"


def _c_int(text: str) -> int | None:
    """text read as CPython 3.13 reads PYTHON_CPU_COUNT and -X cpu_count (strtol in base
    10, then a check for C's int): blanks before, a sign, ASCII digits; None if not that."""
    body = text.lstrip(_C_BLANKS)
    digits = body[1:] if body[:1] in ("+", "-") else body
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    digits = digits.lstrip("0") or "0"
    if len(digits) > len(str(_INT_MAX)):  # bounded before int() sees it
        return None
    value = -int(digits) if body[:1] == "-" else int(digits)
    return value if -_INT_MAX - 1 <= value <= _INT_MAX else None


def _shown(text: str) -> str:
    """A setting as an error shows it: quoted, and cut short if long."""
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _override_count(setting: str, named: str) -> int | None:
    """The count a setting asks for (None for "default"); ValueError naming it if bad."""
    if setting == "default":
        return None
    count = _c_int(setting)
    if count is None or count < 1:
        raise ValueError(f"{named}: expected a whole number from 1 to {_INT_MAX} or 'default'")
    return count


def _override(probe: "AnyProbe") -> CpuLimit:
    """PYTHON_CPU_COUNT or -X cpu_count, read as CPython 3.13 reads them for os.cpu_count.

    A bad value raises ValueError naming it (CPython 3.13 refuses to start with one): the
    variable is read first and then the option, as CPython does, so a bad variable is an
    error even where the option replaces it.
    """
    option, ignores_environment = probe.interpreter()
    variable = probe.env("PYTHON_CPU_COUNT")
    used = variable if variable and not ignores_environment else None
    count = None if used is None else _override_count(used, f"PYTHON_CPU_COUNT={_shown(used)}")
    if option is not None:
        setting = "" if option is True else str(option)
        given = "-X cpu_count" if option is True else f"-X cpu_count={_shown(setting)}"
        replaced = f", replacing PYTHON_CPU_COUNT={used}" if used else ""
        if option is True:
            raise ValueError(f"{given}: expected a whole number from 1 to {_INT_MAX} or 'default'")
        option_count = _override_count(setting, given)
        if option_count is None:
            return CpuLimit("override", None, f"-X cpu_count=default: no override{replaced}")
        return CpuLimit(
            "override", option_count, f"-X cpu_count={option_count} on the command line{replaced}"
        )
    if not variable:
        return _NO_OVERRIDE if variable is None else _EMPTY_OVERRIDE
    if used is None:
        return CpuLimit(
            "override",
            None,
            f"PYTHON_CPU_COUNT={_shown(variable)} is ignored: the interpreter runs with -E or -I",
        )
    if count is None:
        return CpuLimit("override", None, "PYTHON_CPU_COUNT=default: no override")
    return CpuLimit("override", count, f"PYTHON_CPU_COUNT={count} in the environment")


# -- Batch schedulers: in _schedulers, loaded only where a scheduler's job is running ---
# A scheduler's figure counts only where its variables clearly describe this host's share
# for this process: a wrong figure is worse than none, since the smallest one wins.


def _scheduler_limits(probe: "AnyProbe") -> list[CpuLimit]:
    # Outside any job the question is asked, and so watched for a change by cpu_count().
    if not probe.in_a_job():
        return OUTSIDE_ANY_JOB
    from . import _schedulers

    return _schedulers.limits(probe)


# -- The walk and the answers ----------------------------------------------------------


def _walk(probe: "AnyProbe") -> CpuCount:
    override = _override(probe)  # first: a bad setting raises before anything is read
    limits = [probe.machine(), probe.affinity(), *_cgroups.limits(probe)]
    limits += [*_scheduler_limits(probe), override]
    if override[1] is not None:
        return CpuCount(override[1], limits, "override")
    figures = [limit[1] for limit in limits if limit[1] is not None]
    return CpuCount(max(1, min(figures)) if figures else 1, limits)


def explain_cpu_count(root: "StrPath" = "/") -> "CpuCount":
    """Work out the CPU count afresh and say why: each limit considered, and the answer.

    The answer is the override (PYTHON_CPU_COUNT, unless the interpreter ignores the
    environment, or -X cpu_count) where one is in force, otherwise the smallest limit
    found (online CPUs, the affinity mask, the CPU quota of this process's cgroup and of
    each ancestor, v1 and v2, and a batch scheduler's allocation on this host), at least
    1.  With ``root`` other than "/", a captured system: everything is read from files
    under root (proc/self/{cgroup,mountinfo,status,environ,cmdline},
    proc/sys/kernel/hostname, sys/devices/system/cpu/online, the cgroup mounts, the files
    scheduler variables name), and nothing outside it: no symbolic link is followed there
    and no "..".  Raises ValueError for a bad override, naming it, and OSError for a root
    that is missing or not a directory.
    """
    base = os.fspath(root)
    if not base:
        raise ValueError("root: expected a directory, found ''")
    if not base.rstrip("/"):
        return _walk(_LiveProbe())
    from ._captured import CapturedProbe

    probe = CapturedProbe(base)
    try:
        return _walk(probe)
    finally:
        probe.close()


_count = 1
_recheck_at = float("-inf")  # the first call walks
_seen: "Seen" = []


def cpu_count(*, refresh: bool = False) -> int:
    """Get the rounded-up integer number of whole CPUs available.

    Counts hyperthreads as CPUs.  The override (PYTHON_CPU_COUNT or -X cpu_count) where
    one is in force; otherwise the smallest of the machine's online CPUs, this process's
    affinity mask, the CPU quota (cgroup v1 or v2) of the cgroup this process is in and
    of every ancestor, and what a batch scheduler allotted to this host.  Ignores cpu
    shares and weights, which cannot be turned into a count.  At least 1.

    Remembered, and checked at most once a second: a change of quota, affinity, cgroup,
    override or scheduler setting is seen by calls made more than a second after it.
    ``refresh=True`` works it out afresh now.  Raises ValueError for a bad override.
    """
    if refresh or monotonic() >= _recheck_at:
        return _renew(refresh)
    return _count


def _unchanged(seen: "Seen") -> bool:
    return all(function(*arguments) == answer for function, arguments, answer in seen)


def _renew(refresh: bool) -> int:
    global _count, _recheck_at, _seen
    if refresh or not _seen or not _unchanged(_seen):
        probe = _LiveProbe()
        _count = _walk(probe).count
        _seen = probe.seen
    _recheck_at = monotonic() + RECHECK_SECONDS
    return _count


def _figures_of(
    reader: "Callable[..., tuple[int, *tuple[int, ...]]]", path: "StrPath", expected: str
) -> "tuple[int, ...]":
    """A core reader's figures from the file at path; its failure as the exception."""
    shown = os.fspath(path)
    reason, *figures = reader(WORKING_DIRECTORY, shown)
    if reason == MALFORMED:
        raise ValueError(f"{shown}: expected {expected}")
    if reason == NOT_REGULAR:
        from ._errors import not_a_regular_file

        raise not_a_regular_file(shown, "a file to read", WORKING_DIRECTORY, shown)
    if reason:
        raise OSError(reason, unreadable(reason), shown)
    return tuple(figures)


def parse_quota_cgroups1(
    quota_file: "StrPath" = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
    period_file: "StrPath" = "/sys/fs/cgroup/cpu/cpu.cfs_period_us",
) -> tuple[int, int]:
    """(quota, period) in microseconds from cgroup v1 files; a quota of -1 means none.

    Raises FileNotFoundError if a file is missing, ValueError if one is malformed, and
    OSError naming the reason for a file that is not a regular file or is too long.
    """
    (quota,) = _figures_of(_impl.core.cfs_figure, quota_file, "a whole number")
    (period,) = _figures_of(_impl.core.cfs_figure, period_file, "a whole number")
    return quota, period


def parse_quota_cgroups2(file: "StrPath" = "/sys/fs/cgroup/cpu.max") -> tuple[int, int]:
    """(quota, period) in microseconds from a cgroup v2 cpu.max; "max" is returned as -1.

    Raises FileNotFoundError if the file is missing, ValueError if it is malformed, and
    OSError naming the reason for a file that is not a regular file or is too long.
    """
    quota, period = _figures_of(_impl.core.cpu_max, file, "'QUOTA PERIOD' or 'max PERIOD'")
    return quota, period
