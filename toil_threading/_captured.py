"""A process's view of a machine captured under a directory, for explain_cpu_count(root=...).

Everything is read from files beneath the root, opened once: proc/self/{status,environ,
cmdline}, proc/sys/kernel/hostname and sys/devices/system/cpu/online beside what the live
walk reads.  The cores open each path beneath the root's descriptor with no symbolic link
followed and no "..", so nothing outside the root is read.  Loaded only for such a root.
"""

from . import _impl
from ._cpu_limits import JOB_VARIABLES, CpuLimit, Probe, cpus_in_words, unreadable
from ._protocol import FIGURE_FILE_BYTES, STATUS_FILE_BYTES, TABLE_FILE_BYTES


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


class CapturedProbe(Probe):
    """A process's view captured under root: everything comes from files beneath it.

    Holds the root's descriptor until close().  Raises OSError where root is missing or
    not a directory.
    """

    __slots__ = ("_environment", "_root")

    def __init__(self, root: str) -> None:
        self._root = _impl.core.Directory(root, follow=True)
        super().__init__(self._root.fd)
        self._environment: str | None = None

    def close(self) -> None:
        self._root.close()

    def _text(self, path: str, size: int) -> str:
        """The file's text, "" where it cannot be read."""
        reason: int
        text: str
        reason, text = self.read(_impl.core.read_bounded, path, size)
        return "" if reason else text

    def env(self, name: str) -> str | None:
        if self._environment is None:
            # NUL-separated entries, searched as "\0NAME=": a few names of dozens are asked.
            self._environment = "\0" + self._text("/proc/self/environ", TABLE_FILE_BYTES)
        start = self._environment.find(f"\0{name}=")
        if start < 0:
            return None
        start += len(name) + 2
        end = self._environment.find("\0", start)
        return self._environment[start : len(self._environment) if end < 0 else end]

    def in_a_job(self) -> bool:
        return any(self.env(name) for name in JOB_VARIABLES)

    def _cpu_list(self, source: str, path: str, key: str, size: int) -> CpuLimit:
        """A limit from a CPU list ("0-3,8"): a whole file, or its line "key:"."""
        where = f"{key} in {path}" if key else path
        reason, count = self.read(_impl.core.cpu_list_size, path, key, size)
        if reason:
            return CpuLimit(source, None, f"{where} unreadable ({unreadable(reason)})")
        if count < 1:
            return CpuLimit(source, None, f"{where} lists no CPU")
        return CpuLimit(source, count, f"{cpus_in_words(count)} listed in {where}")

    def machine(self) -> CpuLimit:
        path = "/sys/devices/system/cpu/online"
        return self._cpu_list("machine", path, "", FIGURE_FILE_BYTES)

    def affinity(self) -> CpuLimit:
        path, key = "/proc/self/status", "Cpus_allowed_list"
        return self._cpu_list("affinity", path, key, STATUS_FILE_BYTES)

    def interpreter(self) -> tuple[object, bool]:
        text = self._text("/proc/self/cmdline", TABLE_FILE_BYTES)
        return _interpreter_options(text.split("\0") if text else [])

    def hostname(self) -> str:
        return self._text("/proc/sys/kernel/hostname", FIGURE_FILE_BYTES).strip()
