"""What cpu_count() asks and answers: the probe, a CpuLimit per source, and the CpuCount.

Every source that can limit the count answers with a CpuLimit: the online CPUs, the
affinity mask, the CPU quota of this process's cgroup and of each ancestor (toil_threading
._cgroups), what a batch scheduler allotted to this host (toil_threading._schedulers), and
the PYTHON_CPU_COUNT / -X cpu_count override.  Each source asks its questions of a Probe:
the live process (LiveProbe, here) or a system captured under another root
(toil_threading._captured).  This module holds the probes, the shapes of the answer and
the words for why a file gave no figure, which every module of the walk shares; the walk
and the decision are in toil_threading._cpu.
"""

import os
import sys
from abc import ABC, abstractmethod

from . import _impl
from ._protocol import (
    MALFORMED,
    NOT_REGULAR,
    OUTSIDE_ROOT,
    TABLE_FILE_BYTES,
    TOO_LONG,
    WORKING_DIRECTORY,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeAlias

    Seen: TypeAlias = "list[tuple[Callable[..., Any], tuple[Any, ...], Any]]"

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


def cpus_in_words(count: int) -> str:
    return "1 CPU" if count == 1 else f"{count} CPUs"


def tasks_in_words(count: int) -> str:
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
        """Where the figure came from, or why there is none, for people: values from
        outside as they were found (str() shows them escaped for a terminal)."""
        return self[2]  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"CpuLimit(source={self[0]!r}, cpus={self[1]!r}, detail={self[2]!r})"

    def __str__(self) -> str:
        from ._escaping import escaped  # only where an explanation is shown

        figure = "no limit" if self[1] is None else cpus_in_words(self[1])
        return f"{self[0]}: {figure} ({escaped(self[2])})"


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
        decided_by = self.decided_by or "no source"
        lines = [f"cpu_count: {cpus_in_words(self.count)}, decided by {decided_by}"]
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


# Why a file gave no figure, for people: the package's own reasons, else the errno's words.
_REASONS = {
    TOO_LONG: "too long to be a figure of its kind",
    MALFORMED: "not in its format",
    NOT_REGULAR: "not a regular file",
    OUTSIDE_ROOT: "outside the captured root",
}


def unreadable(reason: int) -> str:
    """Why a file could not be read, from the errno (or package reason) its read gave."""
    return _REASONS.get(reason) or os.strerror(reason)


# Batch schedulers outside a job: each answers with one of these, made once.
NO_SLURM = CpuLimit("slurm", None, "not in a Slurm job: no SLURM_JOB_ID")
NO_PBS = CpuLimit("pbs", None, "not in a PBS or Torque job: no PBS_JOBID")
NO_SGE = CpuLimit("sge", None, "not in a Grid Engine job: no JOB_ID with SGE_ROOT")
NO_LSF = CpuLimit("lsf", None, "not in an LSF job: no LSB_JOBID")
NO_HTCONDOR = CpuLimit("htcondor", None, "not in an HTCondor job: no _CONDOR_MACHINE_AD")
OUTSIDE_ANY_JOB = [NO_SLURM, NO_PBS, NO_SGE, NO_LSF, NO_HTCONDOR]


# -- The probes: what each source asks, of the live process or of a captured system ---


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


class Probe(ABC):
    """What the walk asks: the live process, or a system captured beneath a directory.

    Files are read by the cores relative to ``directory`` (WORKING_DIRECTORY for the live
    process, whose paths are absolute; a captured root's descriptor, beneath which paths
    are relative).  Every question and its answer are kept in ``seen``, as (function,
    arguments, answer), so that asking them again tells whether anything the answer
    rests on has changed.  Each kind of probe answers the rest (env, in_a_job, machine,
    affinity, interpreter, hostname) its own way.
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

    @abstractmethod
    def env(self, name: str) -> str | None:
        """The environment variable name, None where it is not set."""

    @abstractmethod
    def in_a_job(self) -> bool:
        """Whether any of JOB_VARIABLES is set (and not empty)."""

    @abstractmethod
    def machine(self) -> CpuLimit:
        """The online CPUs."""

    @abstractmethod
    def affinity(self) -> CpuLimit:
        """The CPUs the affinity mask allows."""

    @abstractmethod
    def interpreter(self) -> tuple[object, bool]:
        """(-X cpu_count's value or None, whether the environment is ignored)."""

    @abstractmethod
    def hostname(self) -> str:
        """This host's name, as the schedulers' lists name it."""


class LiveProbe(Probe):
    """This process, through the system calls and the interpreter's own settings."""

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
