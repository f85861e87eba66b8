# One source for both cores: the pure core imports this module, and the compiled core
# includes it at build time (csrc/_core_c.pyx), so Cython compiles this same code.
# Keep it plain Python that Cython accepts: no `from __future__`, no third-party imports;
# the compiled core ignores the annotations (annotation_typing=False).
"""The CPU limits on this process: online CPUs, affinity, and cgroup v1/v2 quotas.

Each limit is reported as (source, cpus, detail): cpus is a whole number of CPUs
(rounded up), or None where the source sets no limit or could not be read; detail says
where it came from, for people asking why cpu_count() said what it said.
"""

import os


def _read_text(path: str) -> str:
    with open(path) as stream:
        return stream.read()


def _whole_number(text: str, path: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{path}: expected a whole number, found {text.strip()!r}") from None


def parse_quota_v1(quota_file: str, period_file: str) -> tuple[int, int]:
    """(quota, period) in microseconds from cgroup v1 files; quota -1 means none."""
    quota = _whole_number(_read_text(quota_file), quota_file)
    period = _whole_number(_read_text(period_file), period_file)
    return quota, period


def parse_quota_v2(file: str) -> tuple[int, int]:
    """(quota, period) in microseconds from a cgroup v2 cpu.max; "max" is -1."""
    text = _read_text(file)
    fields = text.split()
    if len(fields) != 2:
        raise ValueError(f"{file}: expected 'QUOTA PERIOD', found {text.strip()!r}")
    quota = -1 if fields[0] == "max" else _whole_number(fields[0], file)
    return quota, _whole_number(fields[1], file)


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (a space is written \\040)."""
    if "\\" not in field:
        return field
    pieces = field.split("\\")
    out = [pieces[0]]
    for piece in pieces[1:]:
        code = piece[:3]
        if len(code) == 3 and all("0" <= digit <= "7" for digit in code):
            out.append(chr(int(code, 8)) + piece[3:])
        else:
            out.append("\\" + piece)
    return "".join(out)


def _cgroup_mounts(mountinfo: str) -> list[tuple[int, set[str], str, str]]:
    """(version, controllers, mount root, mount point) of each cgroup mount in mountinfo."""
    mounts: list[tuple[int, set[str], str, str]] = []
    for line in mountinfo.splitlines():
        before, separator, after = line.partition(" - ")
        fields = before.split()
        tail = after.split()
        if not separator or len(fields) < 5 or len(tail) < 3:
            continue
        if tail[0] == "cgroup2":
            mounts.append((2, set(), _unescape(fields[3]), _unescape(fields[4])))
        elif tail[0] == "cgroup":
            mounts.append((1, set(tail[2].split(",")), _unescape(fields[3]), _unescape(fields[4])))
    return mounts


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


def _cgroup_directories(root: str, mount_root: str, mount_point: str, path: str) -> list[str]:
    """This process's cgroup directory and its ancestors up to the mount, innermost first.

    In a container the path from /proc/self/cgroup may not exist under the mount (the
    mount shows only our own subtree): then the mount itself is our cgroup.
    """
    top = root.rstrip("/") + mount_point.rstrip("/")
    prefix = mount_root.rstrip("/")
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


def _quota_limit(version: int, directory: str) -> tuple[str, int | None, str]:
    """One (source, cpus, detail) for the quota set in one cgroup directory."""
    source = f"cgroup v{version}"
    try:
        if version == 1:
            quota, period = parse_quota_v1(
                directory + "/cpu.cfs_quota_us", directory + "/cpu.cfs_period_us"
            )
        else:
            quota, period = parse_quota_v2(directory + "/cpu.max")
    except (OSError, ValueError) as error:
        return (source, None, f"{directory}: unreadable ({error})")
    if quota <= 0 or period <= 0:
        return (source, None, f"{directory}: no quota")
    return (source, -(-quota // period), f"{directory}: quota {quota} us per {period} us period")


def cpu_limits(root: str) -> list[tuple[str, int | None, str]]:
    """Every CPU limit found for this process; root prefixes /proc and the cgroup mounts.

    root is "/" in real use; tests point it at a fabricated tree.
    """
    limits: list[tuple[str, int | None, str]] = []
    online = os.sysconf("SC_NPROCESSORS_ONLN") if hasattr(os, "sysconf") else -1
    if online > 0:
        limits.append(("machine", online, f"{online} online logical CPUs"))
    if hasattr(os, "sched_getaffinity"):
        allowed = len(os.sched_getaffinity(0))
        limits.append(("affinity", allowed, f"{allowed} CPUs in this process's affinity mask"))
    base = root.rstrip("/")
    try:
        paths = _memberships(_read_text(base + "/proc/self/cgroup"))
        mounts = _cgroup_mounts(_read_text(base + "/proc/self/mountinfo"))
    except OSError as error:
        limits.append(("cgroup", None, f"no cgroup information ({error})"))
        return limits
    for version in (1, 2):
        path = paths.get(version)
        mount = None
        for candidate in mounts:
            if candidate[0] == version and (version == 2 or "cpu" in candidate[1]):
                mount = candidate
                break
        if path is None or mount is None:
            continue
        for directory in _cgroup_directories(root, mount[2], mount[3], path):
            limits.append(_quota_limit(version, directory))
    return limits
