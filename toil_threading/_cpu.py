"""cpu_count(): how many whole CPUs this process may use, and why.

Every source that can limit the count is asked and answers with a CpuLimit
(toil_threading._cpu_limits): the online CPUs, the affinity mask, the cgroups
(toil_threading._cgroups), a batch scheduler (toil_threading._schedulers, loaded only in a
job) and the PYTHON_CPU_COUNT / -X cpu_count override.  The count is the override where
one is in force, otherwise the smallest figure, at least 1.

The walk is written once, over a probe (toil_threading._cpu_limits): the live process,
or a system captured under another root (toil_threading._captured), where everything is
read from files beneath it.  The probe remembers every question it asked and the answer,
so cpu_count() can ask them again once a second and walk anew only when an answer changed.
"""

import os
from time import monotonic

from . import _cgroups, _impl
from ._cpu_limits import OUTSIDE_ANY_JOB, CpuCount, CpuLimit, LiveProbe, Probe, unreadable
from ._protocol import MALFORMED, NOT_REGULAR, WORKING_DIRECTORY

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ._checks import StrPath
    from ._cpu_limits import Seen

# How long cpu_count() answers from memory before asking its questions again.
RECHECK_SECONDS = 1.0


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


def _override(probe: Probe) -> CpuLimit:
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


def _scheduler_limits(probe: Probe) -> list[CpuLimit]:
    # Outside any job the question is asked, and so watched for a change by cpu_count().
    if not probe.in_a_job():
        return OUTSIDE_ANY_JOB
    from . import _schedulers

    return _schedulers.limits(probe)


# -- The walk and the answers ----------------------------------------------------------


def _walk(probe: Probe) -> CpuCount:
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
        return _walk(LiveProbe())
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
        probe = LiveProbe()
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
