"""/proc/self/mountinfo (proc(5)): which mounts this process sees, and which holds a path.

Read by the filesystem report and by the CPU count (for the cgroup mounts).
"""

import os

from . import _impl


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


def unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (a space is written \\040, a backslash \\134)."""
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


def parse_mountinfo(text: str) -> "list[Mount]":
    """The mounts listed in a mountinfo text, in its order (a later one is mounted on top).

    Only newlines and spaces separate: the kernel escapes those (and tabs, backslashes)
    in paths, but leaves other control characters, which str.split() would split on.
    """
    mounts = []
    for line in text.split("\n"):
        before, separator, after = line.partition(" - ")
        fields = [field for field in before.split(" ") if field]
        tail = [field for field in after.split(" ") if field]
        if not separator or len(fields) < 6 or len(tail) < 2:
            continue
        major, _, minor = fields[2].partition(":")
        try:
            device = (int(major), int(minor))
        except ValueError:
            continue
        super_options = tail[2] if len(tail) > 2 else ""
        mounts.append(
            Mount(
                device,
                unescape(fields[3]),
                unescape(fields[4]),
                tail[0],
                unescape(tail[1]),
                ",".join(filter(None, (fields[5], super_options))),
            )
        )
    return mounts


def read_mounts(root: str = "/") -> "list[Mount] | None":
    """The mounts this process sees (root/proc/self/mountinfo), None where there is none."""
    try:
        return parse_mountinfo(_impl.core.read_text(os.path.join(root, "proc/self/mountinfo")))
    except OSError:
        return None


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
