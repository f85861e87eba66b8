"""A process's view of a machine captured under a directory, for explain_cpu_count(root=...).

Everything is read from files there: proc/self/{status,environ,cmdline},
proc/sys/kernel/hostname and sys/devices/system/cpu/online beside what the live walk
reads.  Loaded only for such a root.
"""

from __future__ import annotations

import os

from ._cpu import CpuLimit, _integer, _Probe


def _cpu_list_size(text: str) -> int | None:
    """How many CPUs a list like "0-3,8,10-11" names, None if it is not one."""
    total = 0
    for part in text.strip().split(","):
        first, dash, last = part.partition("-")
        low, high = _integer(first), _integer(last) if dash else _integer(first)
        if low is None or high is None or not 0 <= low <= high:
            return None
        total += high - low + 1
    return total


def _interpreter_options(argv: list[str]) -> tuple[str | bool | None, bool]:
    """(-X cpu_count's value, True if -E or -I is given) from an interpreter's argv.

    The value is True for a bare ``-X cpu_count``, as in sys._xoptions.  Options end at
    the program (a script, ``-c`` or ``-m``).
    """
    option: str | bool | None = None
    ignores_environment = False
    index = 1
    while index < len(argv):
        argument = argv[index]
        index += 1
        if argument == "-" or argument == "--" or not argument.startswith("-"):
            break
        if argument.startswith("--"):
            if argument == "--check-hash-based-pycs":  # the only long option with a value
                index += 1
            continue
        letters = argument[1:]
        for position, letter in enumerate(letters):
            if letter in "cm":
                return option, ignores_environment
            if letter in "IE":
                ignores_environment = True
            elif letter in "WX":
                value = letters[position + 1 :]
                if not value and index < len(argv):
                    value = argv[index]
                    index += 1
                name, equals, setting = value.partition("=")
                if letter == "X" and name == "cpu_count":
                    option = setting if equals else True
                break
    return option, ignores_environment


class CapturedProbe(_Probe):
    """A process's view captured under root: everything comes from files there."""

    __slots__ = ("_environment",)

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self._environment: str | None = None

    def env(self, name: str) -> str | None:
        if self._environment is None:
            text = self.read("/proc/self/environ")
            # NUL-separated entries, searched as "\0NAME=": a few names of dozens are asked.
            self._environment = "\0" + ("" if isinstance(text, int) else text)
        start = self._environment.find(f"\0{name}=")
        if start < 0:
            return None
        start += len(name) + 2
        end = self._environment.find("\0", start)
        return self._environment[start : len(self._environment) if end < 0 else end]

    def machine(self) -> CpuLimit:
        path = "/sys/devices/system/cpu/online"
        text = self.read(path)
        if isinstance(text, int):
            return CpuLimit("machine", None, f"{path} unreadable ({os.strerror(text)})")
        online = _cpu_list_size(text)
        if online is None:
            return CpuLimit("machine", None, f"{path} unreadable: {text.strip()!r}")
        return CpuLimit("machine", online, f"online CPUs {text.strip()} in {path}")

    def affinity(self) -> CpuLimit:
        path = "/proc/self/status"
        text = self.read(path)
        if isinstance(text, int):
            return CpuLimit("affinity", None, f"{path} unreadable ({os.strerror(text)})")
        start = text.find("Cpus_allowed_list:")
        listed = text[start:].split("\n", 1)[0].partition(":")[2].strip()
        allowed = _cpu_list_size(listed) if start >= 0 else None
        if allowed is None:
            return CpuLimit("affinity", None, f"no Cpus_allowed_list in {path}")
        return CpuLimit("affinity", allowed, f"Cpus_allowed_list {listed} in {path}")

    def interpreter(self) -> tuple[object, bool]:
        text = self.read("/proc/self/cmdline")
        return _interpreter_options([] if isinstance(text, int) else text.split("\0"))

    def hostname(self) -> str:
        text = self.read("/proc/sys/kernel/hostname")
        return "" if isinstance(text, int) else text.strip()
