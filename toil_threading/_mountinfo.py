"""/proc/self/mountinfo (proc(5)): the mounts a table lists, and which holds a path.

The cores read and parse the table (csrc/figures.h and its pure twin), the one reader of
it in the package, for the filesystem report (_lockability) and for the cgroup mounts
(_cgroups); this module makes the lines into Mounts and reads nothing itself.
"""


class Mount:
    """One line of /proc/self/mountinfo, its escapes undone."""

    __slots__ = ("device", "mount_point", "options", "root", "source", "type")

    def __init__(
        self,
        device: tuple[int, int],
        root: str,
        mount_point: str,
        mount_type: str,
        source: str,
        options: str,
    ) -> None:
        self.device = device
        self.root = root
        self.mount_point = mount_point
        self.type = mount_type
        self.source = source
        self.options = options


def mounts_from(lines: "list[tuple[int, int, str, str, str, str, str, str]]") -> "list[Mount]":
    """The mounts of a table as a core's mount_table parsed it, in the table's order (a
    later one is mounted on top)."""
    return [
        Mount((major, minor), mount_root, point, kind, source, ",".join(filter(None, options)))
        for major, minor, mount_root, point, kind, source, *options in lines
    ]


def _contains(mount_point: str, path: str) -> bool:
    return mount_point == "/" or path == mount_point or path.startswith(mount_point + "/")


def mount_of(
    mounts: "list[Mount]", path: str, device: tuple[int, int] | None = None
) -> "Mount | None":
    """The mount holding path: the longest mount point containing it (the top one of
    several at one point); among the mounts of device first, where a device is given."""
    candidates = [mount for mount in mounts if device is None or mount.device == device]
    best = None
    for mount in candidates:
        if _contains(mount.mount_point, path) and (
            best is None or len(mount.mount_point) >= len(best.mount_point)
        ):
            best = mount
    if best is None and device is not None:
        return candidates[-1] if candidates else mount_of(mounts, path)
    return best
