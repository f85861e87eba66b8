"""What cpu_count() considers and answers: a CpuLimit per source, and the CpuCount.

Every source that can limit the count answers with a CpuLimit: the online CPUs, the
affinity mask, the CPU quota of this process's cgroup and of each ancestor (toil_threading
._cgroups), what a batch scheduler allotted to this host (toil_threading._schedulers), and
the PYTHON_CPU_COUNT / -X cpu_count override.  This module holds the shapes of the answer
and the words for why a file gave no figure; the walk is in toil_threading._cpu.
"""

import os

from ._protocol import MALFORMED, NOT_REGULAR, OUTSIDE_ROOT, TOO_LONG

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
