"""cpu_count(): the tightest of the online CPUs, the affinity mask and every cgroup quota.

The walk is written once, here; the cores read the files (the compiled one with the
system calls).  Each limit is reported as a CpuLimit, so explain_cpu_count() can say why
cpu_count() said what it said.
"""

from __future__ import annotations

import os

from . import _impl
from ._mountinfo import Mount, parse_mountinfo

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._checks import StrPath


class CpuLimit(tuple):  # type: ignore[type-arg]
    """(source, cpus, detail): one limit on the CPUs this process may use.

    ``cpus`` is None where the source sets no limit or could not be read.  A plain tuple
    with names, not a NamedTuple: typing is too slow to import here.
    """

    __slots__ = ()

    def __new__(cls, source: str, cpus: int | None, detail: str) -> CpuLimit:
        return tuple.__new__(cls, (source, cpus, detail))

    @property
    def source(self) -> str:
        """ "machine", "affinity", "cgroup v1", "cgroup v2" or "cgroup"."""
        return self[0]  # type: ignore[no-any-return]

    @property
    def cpus(self) -> int | None:
        """Whole CPUs allowed (rounded up), or None for no limit."""
        return self[1]  # type: ignore[no-any-return]

    @property
    def detail(self) -> str:
        """Where the figure came from, for people."""
        return self[2]  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"CpuLimit(source={self[0]!r}, cpus={self[1]!r}, detail={self[2]!r})"


class CpuCount:
    """What cpu_count() answers (``count``) and every limit it considered (``limits``)."""

    __slots__ = ("count", "limits")

    def __init__(self, count: int, limits: list[CpuLimit]) -> None:
        self.count = count
        self.limits = limits

    def __repr__(self) -> str:
        return f"CpuCount(count={self.count!r}, limits={self.limits!r})"


def _whole_number(text: str, path: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{path}: expected a whole number, found {text.strip()!r}") from None


def read_quota_v1(quota_file: str, period_file: str) -> tuple[int, int]:
    """(quota, period) in microseconds from cgroup v1 files; quota -1 means none."""
    quota = _whole_number(_impl.core.read_text(quota_file), quota_file)
    return quota, _whole_number(_impl.core.read_text(period_file), period_file)


def read_quota_v2(file: str) -> tuple[int, int]:
    """(quota, period) in microseconds from a cgroup v2 cpu.max; "max" is -1."""
    text = _impl.core.read_text(file)
    fields = text.split()
    if len(fields) != 2:
        raise ValueError(f"{file}: expected 'QUOTA PERIOD', found {text.strip()!r}")
    quota = -1 if fields[0] == "max" else _whole_number(fields[0], file)
    return quota, _whole_number(fields[1], file)


def _memberships(proc_cgroup: str) -> dict[int, str]:
    """The cgroup path of this process for v2 (key 2) and for the v1 cpu controller (key 1)."""
    paths: dict[int, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            paths[2] = parts[2]
        elif "cpu" in parts[1].split(","):
            paths[1] = parts[2]
    return paths


def _cgroup_mount(mounts: list[Mount], version: int) -> Mount | None:
    """The first v2 mount, or the first v1 mount with the cpu controller."""
    for mount in mounts:
        if version == 2 and mount.type == "cgroup2":
            return mount
        if version == 1 and mount.type == "cgroup" and "cpu" in mount.options.split(","):
            return mount
    return None


def _cgroup_directories(root: str, mount: Mount, path: str) -> list[str]:
    """This process's cgroup directory and its ancestors up to the mount, innermost first.

    In a container the path from /proc/self/cgroup may not exist under the mount (the
    mount shows only our own subtree): then the mount itself is our cgroup.
    """
    top = root.rstrip("/") + mount.mount_point.rstrip("/")
    prefix = mount.root.rstrip("/")
    leaf = top
    if path == prefix or path.startswith(prefix + "/"):
        candidate = top + path[len(prefix) :].rstrip("/")
        if os.path.isdir(candidate):
            leaf = candidate
    directories = [leaf]
    while len(leaf) > len(top):
        leaf = leaf.rsplit("/", 1)[0]
        directories.append(leaf)
    return directories


def _quota_limit(version: int, directory: str) -> CpuLimit:
    """The limit set by the quota of one cgroup directory."""
    source = f"cgroup v{version}"
    try:
        if version == 1:
            quota, period = read_quota_v1(
                directory + "/cpu.cfs_quota_us", directory + "/cpu.cfs_period_us"
            )
        else:
            quota, period = read_quota_v2(directory + "/cpu.max")
    except (OSError, ValueError) as error:
        return CpuLimit(source, None, f"{directory}: unreadable ({error})")
    if quota <= 0 or period <= 0:
        return CpuLimit(source, None, f"{directory}: no quota")
    return CpuLimit(
        source, -(-quota // period), f"{directory}: quota {quota} us per {period} us period"
    )


def cpu_limits(root: str) -> list[CpuLimit]:
    """Every CPU limit found for this process; root prefixes /proc and the cgroup mounts."""
    limits = []
    online = os.sysconf("SC_NPROCESSORS_ONLN") if hasattr(os, "sysconf") else -1
    if online > 0:
        limits.append(CpuLimit("machine", online, f"{online} online logical CPUs"))
    if hasattr(os, "sched_getaffinity"):
        allowed = len(os.sched_getaffinity(0))
        limits.append(
            CpuLimit("affinity", allowed, f"{allowed} CPUs in this process's affinity mask")
        )
    base = root.rstrip("/")
    try:
        paths = _memberships(_impl.core.read_text(base + "/proc/self/cgroup"))
        mounts = parse_mountinfo(_impl.core.read_text(base + "/proc/self/mountinfo"))
    except OSError as error:
        limits.append(CpuLimit("cgroup", None, f"no cgroup information ({error})"))
        return limits
    for version in (1, 2):
        path = paths.get(version)
        mount = _cgroup_mount(mounts, version)
        if path is None or mount is None:
            continue
        limits.extend(
            _quota_limit(version, directory) for directory in _cgroup_directories(root, mount, path)
        )
    return limits


def explain_cpu_count(root: StrPath = "/") -> CpuCount:
    """Work out the CPU count afresh and say why: each limit considered, and the answer.

    The answer is the smallest limit found (online CPUs, affinity mask, the CPU quota of
    this process's cgroup and of each ancestor, v1 and v2), at least 1.  ``root`` is
    where /proc and the cgroup mounts are looked for: "/" except in tests.
    """
    limits = cpu_limits(os.fspath(root))
    found = [limit.cpus for limit in limits if limit.cpus is not None]
    return CpuCount(max(1, min(found)) if found else (os.cpu_count() or 1), limits)


_cpu_count: int | None = None


def cpu_count() -> int:
    """Get the rounded-up integer number of whole CPUs available.

    Counts hyperthreads as CPUs.  The smallest of the machine's online CPUs, this
    process's affinity mask and the CPU quota (cgroup v1 or v2) of the cgroup this
    process is in and of every ancestor.  Ignores cpu shares, which cannot be turned into
    a count.  Cached after the first call; at least 1.
    """
    global _cpu_count
    if _cpu_count is None:
        _cpu_count = explain_cpu_count().count
    return _cpu_count


def parse_quota_cgroups1(
    quota_file: StrPath = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
    period_file: StrPath = "/sys/fs/cgroup/cpu/cpu.cfs_period_us",
) -> tuple[int, int]:
    """(quota, period) in microseconds from cgroup v1 files; a quota of -1 means none.

    Raises FileNotFoundError if a file is missing, ValueError if one is malformed.
    """
    return read_quota_v1(os.fspath(quota_file), os.fspath(period_file))


def parse_quota_cgroups2(file: StrPath = "/sys/fs/cgroup/cpu.max") -> tuple[int, int]:
    """(quota, period) in microseconds from a cgroup v2 cpu.max; "max" is returned as -1.

    Raises FileNotFoundError if the file is missing, ValueError if it is malformed.
    """
    return read_quota_v2(os.fspath(file))
