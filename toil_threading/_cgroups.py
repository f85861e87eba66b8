"""The CPU quota of this process's cgroup and of each ancestor, cgroup v1 and v2.

Which cgroup this process is in (/proc/self/cgroup), where its hierarchy is mounted
(mountinfo's cgroup lines), and each level's quota (cpu.max in v2, cpu.cfs_quota_us and
cpu.cfs_period_us in v1) are read and parsed by the cores, one bounded read each; a file
that cannot be read, or is not in its format, is that level's "no figure", with the reason.
"""

import os
from errno import ENOENT

from . import _impl
from ._cpu_limits import CpuLimit, Probe, unreadable
from ._protocol import NOT_REGULAR

_NO_V1 = CpuLimit("cgroup v1", None, "no v1 hierarchy has the cpu controller")
_NO_V2 = CpuLimit("cgroup v2", None, "not in a cgroup2 hierarchy")

# The live process's cgroup mounts: version -> (mount point, mount root, whether the mount
# shows the hierarchy's real root, the mount point's (device, inode)).  Reading mountinfo
# costs as much as the rest of the walk together; a stat of the mount point tells as well
# whether the same part of the same hierarchy is still mounted there (on cgroupfs the
# device is the hierarchy and the inode the cgroup at the mount's root).  A captured
# root's mountinfo is a plain file, read each time.
_mounts: dict[int, tuple[str, str, bool, tuple[int, int]]] = {}


def _identity(path: str) -> tuple[int, int] | int:
    """(device, inode) of path, or the errno of a failed stat."""
    try:
        found = os.stat(path)
    except OSError as error:
        return error.errno or ENOENT
    return found.st_dev, found.st_ino


def _is_directory(probe: Probe, path: str) -> bool:
    # Opened as a file to read, a directory is "not a regular file": one question that
    # works the same under a captured root.
    reason: int = probe.read(_impl.core.read_bounded, path + "/", 0)[0]
    return reason == NOT_REGULAR


def _within(path: str, directory: str) -> bool:
    return directory == "/" or path == directory or path.startswith(directory + "/")


def _find_mount(
    mounts: "list[tuple[int, int, str, str, str, str, str, str]]", version: int, path: str
) -> tuple[str, str] | None:
    """(mount point, mount root) of the hierarchy among mountinfo's cgroup lines.

    v2: a cgroup2 mount; v1: a cgroup mount with the cpu controller.  One whose root
    holds path is preferred; otherwise the first.
    """
    first = None
    for _, _, root, point, _, _, _, super_options in mounts:
        if version == 1 and "cpu" not in super_options.split(","):
            continue
        if _within(path, root):
            return point, root
        first = first or (point, root)
    return first


def _mount(probe: Probe, version: int, path: str) -> tuple[str, str, bool] | int | None:
    """(mount point, mount root, whether the mount point is the hierarchy's real root),
    None where there is no such mount, or the reason mountinfo could not be read.

    Only for the live process is the real root told apart (its quota is then not read:
    it can have none); a captured system is read as it is.
    """
    live = probe.live
    known = _mounts.get(version) if live else None
    if known is not None and _within(path, known[1]) and probe.ask(_identity, known[0]) == known[3]:
        return known[0], known[1], known[2]
    arguments = (probe.beneath("/proc/self/mountinfo"), "cgroup2" if version == 2 else "cgroup")
    answer = _impl.core.mount_table(probe.directory, *arguments)
    found = None if answer[0] else _find_mount(answer[1], version, path)
    identity = probe.ask(_identity, found[0]) if found is not None and live else None
    if not isinstance(identity, tuple):
        # Nothing known to stat: mountinfo's lines themselves are what a later check compares.
        probe.remember(_impl.core.mount_table, (probe.directory, *arguments), answer)
    if answer[0]:
        return answer[0]
    if found is None or not live:
        return None if found is None else (*found, False)
    point, mount_root = found
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
    return point, mount_root, real_root


def _quota(source: str, shown: str, quota: int, period: int) -> CpuLimit:
    return CpuLimit(
        source, -(-quota // period), f"{shown}: quota {quota} us per {period} us period"
    )


def _level_v2(probe: Probe, directory: str) -> tuple[CpuLimit, bool]:
    """The limit a v2 cgroup directory sets, and whether it has no cpu.max."""
    shown = directory or "/"
    reason, quota, period = probe.read(_impl.core.cpu_max, directory + "/cpu.max")
    if reason == ENOENT:
        why = "no cpu.max: the cpu controller is not enabled here, or this is a root cgroup"
        return CpuLimit("cgroup v2", None, f"{shown}: {why}"), True
    if reason:
        why = f"{shown}: cpu.max unreadable ({unreadable(reason)})"
        return CpuLimit("cgroup v2", None, why), False
    if quota < 0:
        return CpuLimit("cgroup v2", None, f"{shown}: cpu.max is 'max {period}'"), False
    return _quota("cgroup v2", shown, quota, period), False


def _level_v1(probe: Probe, directory: str) -> tuple[CpuLimit, bool]:
    """The limit a v1 cgroup directory sets, and whether it has no cpu.cfs_quota_us."""
    shown = directory or "/"
    reason, quota = probe.read(_impl.core.cfs_figure, directory + "/cpu.cfs_quota_us")
    if reason == ENOENT:
        return CpuLimit("cgroup v1", None, f"{shown}: no cpu.cfs_quota_us"), True
    if reason:
        why = f"{shown}: cpu.cfs_quota_us unreadable ({unreadable(reason)})"
        return CpuLimit("cgroup v1", None, why), False
    if quota <= 0:
        return CpuLimit("cgroup v1", None, f"{shown}: cpu.cfs_quota_us is {quota}"), False
    # The period only matters under a quota: -1, the usual case, costs one read.
    reason, period = probe.read(_impl.core.cfs_figure, directory + "/cpu.cfs_period_us")
    if reason or period <= 0:
        why = unreadable(reason) if reason else f"it is {period}"
        return CpuLimit(
            "cgroup v1", None, f"{shown}: quota {quota} us but cpu.cfs_period_us unusable ({why})"
        ), False
    return _quota("cgroup v1", shown, quota, period), False


def _hierarchy(probe: Probe, version: int, path: str) -> list[CpuLimit]:
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
    if isinstance(mount, int):
        return [CpuLimit(source, None, f"mountinfo unreadable ({unreadable(mount)})")]
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
        if missing and not _is_directory(probe, directory):
            # The mount shows only this process's own cgroup: the mount is that cgroup.
            why = f"{limits[0][2]}; {path} is not under the mount: taken as the mount's own"
            return [CpuLimit(source, limits[0][1], why)]
        if missing and version == 2:
            without = directory
        limits.append(limit)
    limits.reverse()
    return limits


def limits(probe: Probe) -> list[CpuLimit]:
    """The cgroup limits on this process: v1's levels (or why none), then v2's."""
    reason, v1_path, v2_path = probe.read(_impl.core.cgroup_membership, "/proc/self/cgroup")
    if reason:
        why = f"/proc/self/cgroup unreadable ({unreadable(reason)})"
        return [CpuLimit("cgroup v1", None, why), CpuLimit("cgroup v2", None, why)]
    if v1_path is None:
        return [_NO_V1, *([_NO_V2] if v2_path is None else _hierarchy(probe, 2, v2_path))]
    # A controller is bound to one hierarchy at a time (kernel cgroup-v2.rst), so with
    # cpu on v1 no cgroup2 directory has cpu.max: nothing there to read.
    why = (
        f"the cpu controller is on a v1 hierarchy (cgroup {v1_path}): no cgroup2 group has cpu.max"
    )
    return [*_hierarchy(probe, 1, v1_path), CpuLimit("cgroup v2", None, why)]
