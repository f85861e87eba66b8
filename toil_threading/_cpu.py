"""cpu_count(): how many whole CPUs this process may use, and why.

Every source that can limit the count is asked, and answers with a CpuLimit: the online
CPUs, the affinity mask, the CPU quota of this process's cgroup and of each ancestor (v1
and v2), what a batch scheduler (Slurm, PBS/Torque, Grid Engine, LSF, HTCondor) allotted
to this host, and the PYTHON_CPU_COUNT / -X cpu_count override.  The count is the
override where one is in force, otherwise the smallest figure, at least 1.

The walk is written once, over a probe: the live process (root "/") or a system captured
under another root, where everything is read from files.  The cores read the files (the
compiled one with the system calls).  The probe remembers every question it asked and
the answer, so cpu_count() can ask them again once a second and walk anew only when an
answer changed.
"""

import os
import sys
from errno import EIO, ENOENT
from time import monotonic

from . import _impl

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeAlias, TypeVar

    from ._checks import StrPath

    _Argument = TypeVar("_Argument")
    _Answer = TypeVar("_Answer")

    from ._captured import CapturedProbe

    _AnyProbe: TypeAlias = "_LiveProbe | CapturedProbe"

# The order of an explanation: the machine, what narrows it down, then the override.
SOURCES = (
    "machine",
    "affinity",
    "cgroup v1",
    "cgroup v2",
    "slurm",
    "pbs",
    "sge",
    "lsf",
    "htcondor",
    "override",
)
# Which source decides when several give the count: the most specific first.
TIE_ORDER = (
    "override",
    "cgroup v2",
    "cgroup v1",
    "affinity",
    "slurm",
    "pbs",
    "sge",
    "lsf",
    "htcondor",
    "machine",
)
# How long cpu_count() answers from memory before asking its questions again.
RECHECK_SECONDS = 1.0


def _cpus(count: int) -> str:
    return "1 CPU" if count == 1 else f"{count} CPUs"


def _tasks(count: int) -> str:
    return "1 task" if count == 1 else f"{count} tasks"


class CpuLimit(tuple):  # type: ignore[type-arg]
    """(source, cpus, detail): what one source says about the CPUs this process may use.

    ``cpus`` is None where the source sets no limit, could not be read, or (a scheduler)
    does not clearly describe this host.  A plain tuple with names, not a NamedTuple:
    typing is too slow to import here.
    """

    __slots__ = ()

    def __new__(cls, source: str, cpus: int | None, detail: str) -> "CpuLimit":
        return tuple.__new__(cls, (source, cpus, detail))

    @property
    def source(self) -> str:
        """One of SOURCES: "machine", "affinity", "cgroup v1", "cgroup v2", "slurm",
        "pbs", "sge", "lsf", "htcondor" or "override"."""
        return self[0]  # type: ignore[no-any-return]

    @property
    def cpus(self) -> int | None:
        """Whole CPUs allowed (a quota rounded up), or None for no limit."""
        return self[1]  # type: ignore[no-any-return]

    @property
    def detail(self) -> str:
        """Where the figure came from, or why there is none, for people."""
        return self[2]  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"CpuLimit(source={self[0]!r}, cpus={self[1]!r}, detail={self[2]!r})"

    def __str__(self) -> str:
        figure = "no limit" if self[1] is None else _cpus(self[1])
        return f"{self[0]}: {figure} ({self[2]})"


class CpuCount:
    """What cpu_count() answers (``count``), every limit it considered (``limits``), and
    the source that decided (``decided_by``).

    ``limits`` has one entry per source, except the cgroups: one per level, from this
    process's cgroup up to the mount.  ``decided_by`` is the source whose figure is the
    count; on a tie the first of TIE_ORDER, except that an affinity mask covering every
    online CPU yields to "machine".  It is None only where no source gave a figure.
    """

    __slots__ = ("_decided_by", "count", "limits")

    def __init__(self, count: int, limits: "list[CpuLimit]", decided_by: str | None = None) -> None:
        self.count = count
        self.limits = limits
        self._decided_by = decided_by

    @property
    def decided_by(self) -> str | None:
        """The source whose figure is the count (see the class's docstring)."""
        if self._decided_by is None:
            # Worked out when asked: cpu_count() never needs it.
            self._decided_by = _decider(self.count, self.limits)
        return self._decided_by

    @property
    def sources(self) -> dict[str, int | None]:
        """Each source's figure (the tightest of its limits), None where it sets none."""
        return _figures(self.limits)

    @property
    def decision(self) -> "CpuLimit | None":
        """The limit that decided the count, None where none did."""
        for limit in self.limits:
            if limit[0] == self.decided_by and limit[1] == self.count:
                return limit
        return None

    def __repr__(self) -> str:
        return (
            f"CpuCount(count={self.count!r}, decided_by={self.decided_by!r}, "
            f"limits={self.limits!r})"
        )

    def __str__(self) -> str:
        lines = [f"cpu_count: {_cpus(self.count)}, decided by {self.decided_by or 'no source'}"]
        lines += [f"  {limit}" for limit in self.limits]
        return "\n".join(lines)


def _figures(limits: "list[CpuLimit]") -> dict[str, int | None]:
    figures: dict[str, int | None] = dict.fromkeys(SOURCES)
    for source, cpus, _ in limits:
        if cpus is not None:
            known = figures[source]
            figures[source] = cpus if known is None else min(known, cpus)
    return figures


def _decider(count: int, limits: "list[CpuLimit]") -> str | None:
    deciding = {limit[0] for limit in limits if limit[1] == count}
    if "affinity" in deciding and "machine" in deciding:
        # A mask of every online CPU restricts nothing: the machine is the reason.
        deciding.discard("affinity")
    for source in TIE_ORDER:
        if source in deciding:
            return source
    return None


# -- Parsing the files' formats ---------------------------------------------------------


def _whole(text: str | None) -> int | None:
    """The positive whole number written in decimal digits, else None."""
    if text and text.isascii() and text.isdigit():
        value = int(text)
        return value if value > 0 else None
    return None


def _integer(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _whole_number(text: str, path: str) -> int:
    value = _integer(text)
    if value is None:
        raise ValueError(f"{path}: expected a whole number, found {text.strip()!r}")
    return value


def _cpu_max(text: str) -> tuple[int, int] | None:
    """(quota, period) from the text of a cgroup v2 cpu.max, "max" as -1; None if malformed."""
    fields = text.split()
    if len(fields) != 2 or not fields[1].isdigit():
        return None
    if fields[0] == "max":
        return -1, int(fields[1])
    return (int(fields[0]), int(fields[1])) if fields[0].isdigit() else None


def read_quota_v1(quota_file: str, period_file: str) -> tuple[int, int]:
    """(quota, period) in microseconds from cgroup v1 files; quota -1 means none."""
    quota = _whole_number(_impl.core.read_text(quota_file), quota_file)
    return quota, _whole_number(_impl.core.read_text(period_file), period_file)


def read_quota_v2(file: str) -> tuple[int, int]:
    """(quota, period) in microseconds from a cgroup v2 cpu.max; "max" is -1."""
    text = _impl.core.read_text(file)
    found = _cpu_max(text)
    if found is None:
        raise ValueError(f"{file}: expected 'QUOTA PERIOD', found {text.strip()!r}")
    return found


# -- The probes: the live process, or a system captured under a root --------------------


def _read(path: str) -> str | int:
    """The text of a file, or the errno that kept it from being read."""
    try:
        return _impl.core.read_text(path)
    except OSError as error:
        return error.errno or EIO


def _identity(path: str) -> tuple[int, int] | int:
    """(device, inode) of path, or the errno of a failed stat."""
    try:
        found = os.stat(path)
    except OSError as error:
        return error.errno or EIO
    return found.st_dev, found.st_ino


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


def _online_now(_: object) -> int:
    return os.sysconf("SC_NPROCESSORS_ONLN")


def _affinity_now(_: object) -> int:
    return len(os.sched_getaffinity(0))


def _cpu_count_option_now(_: object) -> object:
    return sys._xoptions.get("cpu_count")


def _hostname_now(_: object) -> str:
    return os.uname().nodename


class _Probe:
    """What the walk asks: the live process (root "") or a system captured under root.

    Every question and its answer are kept in ``seen``, as (function, argument, answer),
    so that asking them again tells whether anything the answer rests on has changed.
    """

    __slots__ = ("root", "seen")

    def __init__(self, root: str) -> None:
        self.root = root
        self.seen: list[tuple[Callable[[Any], object], object, object]] = []

    def ask(self, function: "Callable[[_Argument], _Answer]", argument: "_Argument") -> "_Answer":
        answer = function(argument)
        self.seen.append((function, argument, answer))
        return answer

    def read(self, path: str) -> str | int:
        """The text of the file at path under the root, or the errno of the failure."""
        path = self.root + path
        text = _read(path)
        self.seen.append((_read, path, text))
        return text

    def read_named(self, path: str) -> str | int:
        """The file a variable names: under the root too, when there is one."""
        if self.root and not path.startswith("/"):
            path = "/" + path
        return self.read(path)

    def identity(self, path: str) -> tuple[int, int] | int:
        return self.ask(_identity, self.root + path)


class _LiveProbe(_Probe):
    """This process, through the system calls and the interpreter's own settings.

    Besides read(), both probes answer env(name), machine(), affinity(), hostname() and
    interpreter(): (-X cpu_count's value or None, whether the environment is ignored).
    """

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("")

    def env(self, name: str) -> str | None:
        value = _getenv(name)
        self.seen.append((_getenv, name, value))
        return value

    def machine(self) -> "CpuLimit":
        online = self.ask(_online_now, None)
        if online < 1:
            return CpuLimit("machine", None, "sysconf(_SC_NPROCESSORS_ONLN) gave no count")
        return CpuLimit("machine", online, "online CPUs, from sysconf(_SC_NPROCESSORS_ONLN)")

    def affinity(self) -> "CpuLimit":
        if not hasattr(os, "sched_getaffinity"):
            return CpuLimit("affinity", None, "no affinity mask on this platform")
        allowed = self.ask(_affinity_now, None)
        why = "this process's affinity mask, from sched_getaffinity"
        return CpuLimit("affinity", allowed, why)

    def interpreter(self) -> tuple[object, bool]:
        return self.ask(_cpu_count_option_now, None), bool(sys.flags.ignore_environment)

    def hostname(self) -> str:
        return self.ask(_hostname_now, None)


# -- The override ----------------------------------------------------------------------

_NO_OVERRIDE = CpuLimit(
    "override", None, "PYTHON_CPU_COUNT is not set and there is no -X cpu_count"
)
_EMPTY_OVERRIDE = CpuLimit(
    "override", None, "PYTHON_CPU_COUNT is empty and there is no -X cpu_count"
)


def _override(probe: "_AnyProbe") -> "CpuLimit":
    """PYTHON_CPU_COUNT or -X cpu_count, read as CPython 3.13 reads them for os.cpu_count.

    A bad value raises ValueError naming it (CPython 3.13 refuses to start with one).
    """
    option, ignores_environment = probe.interpreter()
    variable = probe.env("PYTHON_CPU_COUNT")
    if option is not None:
        setting = "" if option is True else str(option)
        # The option is read last, so it replaces the variable, "default" included.
        replaced = (
            f", replacing PYTHON_CPU_COUNT={variable}"
            if variable and not ignores_environment
            else ""
        )
        if setting == "default":
            return CpuLimit("override", None, f"-X cpu_count=default: no override{replaced}")
        count = _whole(setting)
        if count is None:
            given = "-X cpu_count" if option is True else f"-X cpu_count={setting}"
            raise ValueError(f"{given}: expected a positive whole number or 'default'")
        return CpuLimit("override", count, f"-X cpu_count={count} on the command line{replaced}")
    if not variable:
        return _NO_OVERRIDE if variable is None else _EMPTY_OVERRIDE
    if ignores_environment:
        return CpuLimit(
            "override",
            None,
            f"PYTHON_CPU_COUNT={variable} is ignored: the interpreter runs with -E or -I",
        )
    if variable == "default":
        return CpuLimit("override", None, "PYTHON_CPU_COUNT=default: no override")
    count = _whole(variable)
    if count is None:
        raise ValueError(
            f"PYTHON_CPU_COUNT={variable!r} is not a positive whole number, 'default' or empty"
        )
    return CpuLimit("override", count, f"PYTHON_CPU_COUNT={count} in the environment")


# -- cgroups ---------------------------------------------------------------------------

_NO_V1 = CpuLimit("cgroup v1", None, "no v1 hierarchy has the cpu controller")
_NO_V2 = CpuLimit("cgroup v2", None, "not in a cgroup2 hierarchy")

# This process's cgroup mounts: version -> (mount point, mount root, whether the mount
# shows the hierarchy's real root, the mount point's (device, inode) when found).
# Reading mountinfo costs as much as the rest of the walk together; a stat of the mount
# point tells as well whether the same part of the same hierarchy is still mounted there
# (on cgroupfs the device is the hierarchy and the inode the cgroup at the mount's root).
# A captured root's mountinfo is a plain file, read each time.
_mounts: dict[int, tuple[str, str, bool, tuple[int, int]]] = {}


def _within(path: str, directory: str) -> bool:
    return directory == "/" or path == directory or path.startswith(directory + "/")


def _find_mount(text: str, version: int, path: str) -> tuple[str, str] | None:
    """(mount point, mount root) of the hierarchy from mountinfo's text.

    v2: a cgroup2 mount; v1: a cgroup mount with the cpu controller.  One whose root
    holds path is preferred; otherwise the first.
    """
    first = None
    # Searched for rather than split line by line: a mount table has dozens of lines.
    # The separator " - " cannot occur in a field (the kernel escapes spaces).
    marker = " - cgroup2 " if version == 2 else " - cgroup "
    at = text.find(marker)
    while at >= 0:
        end = text.find("\n", at)
        fields = text[text.rfind("\n", 0, at) + 1 : at].split(" ")
        super_options = text[at + len(marker) : len(text) if end < 0 else end].split(" ")
        at = text.find(marker, at + 1)
        if len(fields) < 5 or (version == 1 and "cpu" not in super_options[-1].split(",")):
            continue
        found = (_unescaped(fields[4]), _unescaped(fields[3]))
        if _within(path, found[1]):
            return found
        first = first or found
    return first


def _unescaped(field: str) -> str:
    if "\\" not in field:  # as good as always: the parser need not load at start-up
        return field
    from ._mountinfo import unescape

    return unescape(field)


def _mount(probe: "_AnyProbe", version: int, path: str) -> tuple[str, str, bool] | None:
    """(mount point, mount root, whether the mount point is the hierarchy's real root).

    Only for the live process is the real root told apart (its quota is then not read:
    it can have none); a captured system is read as it is.
    """
    live = not probe.root
    known = _mounts.get(version) if live else None
    if known is not None and _within(path, known[1]) and probe.identity(known[0]) == known[3]:
        return known[0], known[1], known[2]
    mountinfo = probe.root + "/proc/self/mountinfo"
    text = _read(mountinfo)
    found = None if isinstance(text, int) else _find_mount(text, version, path)
    if found is None or not live:
        # Nothing known to stat: the text itself is what a later check compares.
        probe.seen.append((_read, mountinfo, text))
        return None if found is None else (found[0], found[1], False)
    point, mount_root = found
    identity = probe.identity(point)
    # The kernel makes cgroup.sane_behavior only in a v1 root, cgroup.events everywhere
    # but in a v2 root.
    if mount_root != "/":
        real_root = False
    elif version == 1:
        real_root = isinstance(_identity(point + "/cgroup.sane_behavior"), tuple)
    else:
        real_root = not isinstance(_identity(point + "/cgroup.events"), tuple)
    if isinstance(identity, tuple):
        _mounts[version] = (point, mount_root, real_root, identity)
    else:
        probe.seen.append((_read, mountinfo, text))
    return point, mount_root, real_root


def _quota(source: str, shown: str, quota: int, period: int | None) -> "CpuLimit":
    if period is None or period <= 0:
        return CpuLimit(source, None, f"{shown}: quota {quota} us but no usable period")
    return CpuLimit(
        source, -(-quota // period), f"{shown}: quota {quota} us per {period} us period"
    )


def _level_v2(probe: "_AnyProbe", directory: str) -> "tuple[CpuLimit, bool]":
    """The limit a v2 cgroup directory sets, and whether it has no cpu.max."""
    shown = directory or "/"
    text = probe.read(directory + "/cpu.max")
    if text == ENOENT:
        why = "no cpu.max: the cpu controller is not enabled here, or this is a root cgroup"
        return CpuLimit("cgroup v2", None, f"{shown}: {why}"), True
    if isinstance(text, int):
        why = f"{shown}: cpu.max unreadable ({os.strerror(text)})"
        return CpuLimit("cgroup v2", None, why), False
    found = _cpu_max(text)
    if found is None:
        why = f"{shown}: cpu.max unreadable: expected 'QUOTA PERIOD', found {text.strip()!r}"
        return CpuLimit("cgroup v2", None, why), False
    if found[0] < 0:
        return CpuLimit("cgroup v2", None, f"{shown}: cpu.max is 'max {found[1]}'"), False
    return _quota("cgroup v2", shown, *found), False


def _level_v1(probe: "_AnyProbe", directory: str) -> "tuple[CpuLimit, bool]":
    """The limit a v1 cgroup directory sets, and whether it has no cpu.cfs_quota_us."""
    shown = directory or "/"
    text = probe.read(directory + "/cpu.cfs_quota_us")
    if text == ENOENT:
        return CpuLimit("cgroup v1", None, f"{shown}: no cpu.cfs_quota_us"), True
    quota = None if isinstance(text, int) else _integer(text)
    if quota is None:
        why = os.strerror(text) if isinstance(text, int) else repr(text.strip())
        return CpuLimit("cgroup v1", None, f"{shown}: cpu.cfs_quota_us unreadable ({why})"), False
    if quota <= 0:
        why = f"{shown}: cpu.cfs_quota_us is {quota}"
        return CpuLimit("cgroup v1", None, why), False
    # The period only matters under a quota: -1, the usual case, costs one read.
    period = probe.read(directory + "/cpu.cfs_period_us")
    return _quota(
        "cgroup v1", shown, quota, None if isinstance(period, int) else _integer(period)
    ), False


def _hierarchy(probe: "_AnyProbe", version: int, path: str) -> "list[CpuLimit]":
    """One limit per level, from this process's cgroup (path) up to the mount."""
    source = f"cgroup v{version}"
    if "/../" in path + "/":
        return [
            CpuLimit(
                source,
                None,
                f"this process's cgroup {path} lies outside its cgroup namespace, so it is "
                "not visible here, and the quota at the namespace's root does not apply to it",
            )
        ]
    mount = _mount(probe, version, path)
    if mount is None:
        kind = "cgroup2 mount" if version == 2 else "v1 cgroup mount with the cpu controller"
        return [CpuLimit(source, None, f"no {kind} in /proc/self/mountinfo")]
    point, mount_root, real_root = mount
    if not _within(path, mount_root):
        return [
            CpuLimit(
                source,
                None,
                f"this process's cgroup {path} is not in the part of the hierarchy mounted "
                f"at {point} ({mount_root}), so its quota cannot be read",
            )
        ]
    # Walked from the mount down: in v2 a group below the root without the cpu
    # controller (no cpu.max) cannot pass it on, so nothing under it has cpu.max either.
    top = point.rstrip("/")
    directories = [top]
    for name in path[len(mount_root.rstrip("/")) :].split("/")[1:]:
        if name:
            directories.append(f"{directories[-1]}/{name}")
    level = _level_v1 if version == 1 else _level_v2
    if real_root:
        why = "the root of the hierarchy, where no CPU quota can be set"
        limits = [CpuLimit(source, None, f"{top or '/'}: {why}")]
    else:
        limits = [level(probe, top)[0]]
    without = None  # the v2 group from which the cpu controller is missing
    for directory in directories[1:]:
        if without is not None:
            why = f"no cpu.max: the cpu controller is not enabled at {without}, nor below it"
            limits.append(CpuLimit(source, None, f"{directory}: {why}"))
            continue
        limit, missing = level(probe, directory)
        if missing and not isinstance(probe.identity(directory), tuple):
            # The mount shows only this process's own cgroup: the mount is that cgroup.
            why = f"{limits[0][2]}; {path} is not under the mount: taken as the mount's own"
            return [CpuLimit(source, limits[0][1], why)]
        if missing and version == 2:
            without = directory
        limits.append(limit)
    limits.reverse()
    return limits


def _cpu_line(text: str) -> str | None:
    """The line of /proc/self/cgroup for the v1 hierarchy with the cpu controller.

    Found by searching rather than by splitting every line: this runs on every walk.
    """
    for marker in (":cpu:", ":cpu,", ",cpu:", ",cpu,"):
        at = text.find(marker)
        while at >= 0:
            start = text.rfind("\n", 0, at) + 1
            end = text.find("\n", at)
            line = text[start : len(text) if end < 0 else end]
            if "cpu" in line.split(":", 2)[1].split(","):  # the controllers, not the path
                return line
            at = text.find(marker, at + 1)
    return None


def _cgroup2_path(text: str) -> str | None:
    """This process's cgroup2 path, from the "0::" line of /proc/self/cgroup."""
    if text.startswith("0::"):
        start = 0
    else:
        start = text.find("\n0::") + 1
        if not start:
            return None
    end = text.find("\n", start)
    return text[start + 3 : len(text) if end < 0 else end]


def _cgroup_limits(probe: "_AnyProbe") -> "list[CpuLimit]":
    text = probe.read("/proc/self/cgroup")
    if isinstance(text, int):
        why = f"/proc/self/cgroup unreadable ({os.strerror(text)})"
        return [CpuLimit("cgroup v1", None, why), CpuLimit("cgroup v2", None, why)]
    v1_line = _cpu_line(text)
    if v1_line is None:
        v2_path = _cgroup2_path(text)
        return [_NO_V1, *([_NO_V2] if v2_path is None else _hierarchy(probe, 2, v2_path))]
    # A controller is bound to one hierarchy at a time (kernel cgroup-v2.rst), so with
    # cpu on v1 no cgroup2 directory has cpu.max: nothing there to read.
    why = f"the cpu controller is on a v1 hierarchy ({v1_line}): no cgroup2 group has cpu.max"
    return [*_hierarchy(probe, 1, v1_line.split(":", 2)[2]), CpuLimit("cgroup v2", None, why)]


# -- Batch schedulers: in _schedulers, loaded only where a scheduler's job is running ---
# A scheduler's figure counts only where its variables clearly describe this host's share
# for this process: a wrong figure is worse than none, since the smallest one wins.
# Outside a job each answers with a constant, made once.

NO_SLURM = CpuLimit("slurm", None, "not in a Slurm job: no SLURM_JOB_ID")
NO_PBS = CpuLimit("pbs", None, "not in a PBS or Torque job: no PBS_JOBID")
NO_SGE = CpuLimit("sge", None, "not in a Grid Engine job: no JOB_ID with SGE_ROOT")
NO_LSF = CpuLimit("lsf", None, "not in an LSF job: no LSB_JOBID")
NO_HTCONDOR = CpuLimit("htcondor", None, "not in an HTCondor job: no _CONDOR_MACHINE_AD")
_OUTSIDE_ANY_JOB = [NO_SLURM, NO_PBS, NO_SGE, NO_LSF, NO_HTCONDOR]
# The variables that say a scheduler's job is running (each scheduler reads more).
_JOB_VARIABLES = (
    "SLURM_JOB_ID",
    "SLURM_JOBID",
    "PBS_JOBID",
    "JOB_ID",
    "LSB_JOBID",
    "_CONDOR_MACHINE_AD",
)


def _scheduler_limits(probe: "_AnyProbe") -> "list[CpuLimit]":
    # Outside any job every one is asked, and so watched for a change by cpu_count().
    if not any(probe.env(name) for name in _JOB_VARIABLES):
        return _OUTSIDE_ANY_JOB
    from . import _schedulers

    return _schedulers.limits(probe)


# -- The walk and the answers ----------------------------------------------------------


def _walk(probe: "_AnyProbe") -> "CpuCount":
    override = _override(probe)  # first: a bad setting raises before anything is read
    limits = [probe.machine(), probe.affinity(), *_cgroup_limits(probe)]
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
    scheduler variables name).  Raises ValueError for a bad override, naming it.
    """
    base = os.fspath(root).rstrip("/")
    if not base:
        return _walk(_LiveProbe())
    from ._captured import CapturedProbe

    return _walk(CapturedProbe(base))


_count = 1
_recheck_at = float("-inf")  # the first call walks
_seen: "list[tuple[Callable[[Any], object], object, object]]" = []


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


def _unchanged(seen: "list[tuple[Callable[[Any], object], object, object]]") -> bool:
    return all(function(argument) == answer for function, argument, answer in seen)


def _renew(refresh: bool) -> int:
    global _count, _recheck_at, _seen
    if refresh or not _seen or not _unchanged(_seen):
        probe = _LiveProbe()
        _count = _walk(probe).count
        _seen = probe.seen
    _recheck_at = monotonic() + RECHECK_SECONDS
    return _count


def parse_quota_cgroups1(
    quota_file: "StrPath" = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
    period_file: "StrPath" = "/sys/fs/cgroup/cpu/cpu.cfs_period_us",
) -> tuple[int, int]:
    """(quota, period) in microseconds from cgroup v1 files; a quota of -1 means none.

    Raises FileNotFoundError if a file is missing, ValueError if one is malformed.
    """
    return read_quota_v1(os.fspath(quota_file), os.fspath(period_file))


def parse_quota_cgroups2(file: "StrPath" = "/sys/fs/cgroup/cpu.max") -> tuple[int, int]:
    """(quota, period) in microseconds from a cgroup v2 cpu.max; "max" is returned as -1.

    Raises FileNotFoundError if the file is missing, ValueError if it is malformed.
    """
    return read_quota_v2(os.fspath(file))
