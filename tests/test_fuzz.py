"""Property-based tests (Hypothesis) over every parser of outside input, on both cores.

Each parser meets text built from its format's own pieces (so that near-misses are
common) and arbitrary bytes.  The properties: both cores give the same outcome, nothing
raises but the documented exceptions (only an override the user set raises), and each
answer comes in bounded time.  The number of examples is fixed (FUZZ_EXAMPLES, set lower
or higher through TOIL_THREADING_FUZZ_EXAMPLES), so the run has a fixed budget.
"""

import ctypes
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import CORES, linux_only, load_core

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import toil_threading  # noqa: E402
from toil_threading import _captured, _cpu, _impl, _protocol, _retry  # noqa: E402

pytestmark = linux_only

FUZZ_EXAMPLES = int(os.environ.get("TOIL_THREADING_FUZZ_EXAMPLES", "200"))
# Each answer within this: generous, for a loaded shared machine (they take microseconds).
BOUND_SECONDS = 0.25
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,  # bounded by the assertions below, which name what was slow
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TWINS = [load_core(name) for name in CORES]


def pieces_text(pieces: list[str], most: int = 24) -> st.SearchStrategy[bytes]:
    """Text made of a format's pieces, or any bytes at all."""
    built = st.lists(st.sampled_from(pieces), max_size=most).map(lambda parts: "".join(parts))
    return st.one_of(built.map(lambda text: text.encode("utf-8", "surrogateescape")), st.binary())


FORMATS: dict[str, list[str]] = {
    "cpu_max": ["max", " ", "1", "0", "9", "\n", "-", "x", "²", "100000", "9" * 19],
    "cfs_figure": ["-", "1", "0", "\n", " ", "9" * 19, "+", "٣", "100000"],
    "cpu_list": ["0", "1", "-", ",", "\n", " ", "12345678", "3", "٣"],
    "status": ["Cpus_allowed_list:", "\t", " ", "0-3", ",", "\n", "x:", "Cpus_allowed_list"],
    "cgroup": ["0", "1", ":", "cpu", ",", "cpuacct", "/", "a", "\n", "\0", "name=systemd"],
    "mountinfo": [
        *("1", " ", "2", "0:3", "/", "a", "-", "cgroup", "cgroup2", "rw", "\\040", "\\000"),
        *("\\1", "\n", "shared:1", "cpu,cpuacct", ":", "/sys/fs/cgroup"),
    ],
}


def read_with(core: Any, kind: str, directory: int) -> tuple[Any, ...]:
    """One core's reader of kind on the file "f" in directory."""
    if kind == "cpu_max":
        return core.cpu_max(directory, "f")  # type: ignore[no-any-return]
    if kind == "cfs_figure":
        return core.cfs_figure(directory, "f")  # type: ignore[no-any-return]
    if kind == "cpu_list":
        return core.cpu_list_size(directory, "f", "", _protocol.FIGURE_FILE_BYTES)  # type: ignore[no-any-return]
    if kind == "status":
        size = _protocol.STATUS_FILE_BYTES
        return core.cpu_list_size(directory, "f", "Cpus_allowed_list", size)  # type: ignore[no-any-return]
    if kind == "cgroup":
        return core.cgroup_membership(directory, "f")  # type: ignore[no-any-return]
    return core.mount_table(directory, "f", "")  # type: ignore[no-any-return]


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    answer = call()
    return answer, time.perf_counter() - started


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Any:
    directory = tmp_path_factory.mktemp("fuzz")
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    yield directory, fd
    os.close(fd)


@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_the_cores_parse_every_file_alike(kind: str, scratch: Any) -> None:
    directory, fd = scratch

    @FUZZ
    @given(text=pieces_text(FORMATS[kind]))
    def check(text: bytes) -> None:
        (directory / "f").write_bytes(text)
        answers = []
        for core in TWINS:
            answer, seconds = timed(lambda core=core: read_with(core, kind, fd))
            assert seconds < BOUND_SECONDS, (core.__name__, kind, text[:80])
            # Only figures or a reason: the file's format, never an exception.
            assert answer[0] in (0, _protocol.MALFORMED), answer
            answers.append(answer)
        assert all(answer == answers[0] for answer in answers), (text[:200], answers)

    check()


# The walk over a captured system whose every file is fuzzed: cgroups, the mount table,
# the CPU lists, and the environment with each scheduler's variables.

SCHEDULER_VALUES = st.one_of(
    st.sampled_from(
        ["1", "0", "4(x3),2", "n[01-03],m", "n[1-9999999999]", "[", "]", "x[1-2]y[3-4]", "٣"]
    ),
    st.text(alphabet="n[]-,0123456789(x)abc. ", max_size=40),
    st.text(max_size=20).filter(lambda text: "\0" not in text),
)
SCHEDULER_VARIABLES = [
    *("SLURM_JOB_ID", "SLURMD_NODENAME", "SLURM_JOB_NODELIST", "SLURM_JOB_CPUS_PER_NODE"),
    *("SLURM_CPUS_ON_NODE", "SLURM_STEP_ID", "SLURM_STEP_NODELIST", "SLURM_CPUS_PER_TASK"),
    *("SLURM_STEP_TASKS_PER_NODE", "SLURM_STEP_NUM_TASKS", "SRUN_CPUS_PER_TASK"),
    *("PBS_JOBID", "PBS_ENVIRONMENT", "PBS_NUM_PPN", "PBS_NUM_NODES", "NCPUS", "PBS_NODEFILE"),
    *("JOB_ID", "SGE_ROOT", "NSLOTS", "NHOSTS", "PE_HOSTFILE"),
    *("LSB_JOBID", "LSB_MCPU_HOSTS", "LSB_HOSTS", "LSB_DJOB_HOSTFILE", "_CONDOR_MACHINE_AD"),
    "PYTHON_CPU_COUNT",
]
HOST_FILE = pieces_text(["n1", "n01", "node", " ", "4", "\n", "Cpus", "=", "٣", "x", "#"])


@st.composite
def captured_systems(draw: st.DrawFn) -> dict[str, bytes]:
    environ = draw(st.dictionaries(st.sampled_from(SCHEDULER_VARIABLES), SCHEDULER_VALUES))
    for variable in ("PBS_NODEFILE", "PE_HOSTFILE", "LSB_DJOB_HOSTFILE", "_CONDOR_MACHINE_AD"):
        if variable in environ:
            environ[variable] = draw(st.sampled_from(["/hosts", "hosts", "/../x", "/proc"]))
    argv = draw(st.lists(st.sampled_from(["python3", "-X", "cpu_count=2", "-E", "-c", "x"])))
    return {
        "proc/self/cgroup": draw(pieces_text(FORMATS["cgroup"])),
        "proc/self/mountinfo": draw(pieces_text(FORMATS["mountinfo"])),
        "proc/self/status": draw(pieces_text(FORMATS["status"])),
        "proc/self/environ": b"".join(
            f"{name}={value}\0".encode("utf-8", "surrogateescape")
            for name, value in environ.items()
        ),
        "proc/self/cmdline": "\0".join(argv).encode(),
        "proc/sys/kernel/hostname": draw(st.sampled_from([b"n01\n", b"node\n", b""])),
        "sys/devices/system/cpu/online": draw(pieces_text(FORMATS["cpu_list"])),
        "sys/fs/cgroup/cpu.max": draw(pieces_text(FORMATS["cpu_max"])),
        "sys/fs/cgroup/a/cpu.max": draw(pieces_text(FORMATS["cpu_max"])),
        "sys/fs/cgroup/a/cpu.cfs_quota_us": draw(pieces_text(FORMATS["cfs_figure"])),
        "sys/fs/cgroup/a/cpu.cfs_period_us": draw(pieces_text(FORMATS["cfs_figure"])),
        "hosts": draw(HOST_FILE),
    }


def explained(core: Any, root: Path) -> tuple[str, Any]:
    """explain_cpu_count(root) on core: ("count", limits) or ("ValueError", message)."""
    before = _impl.core
    _impl.use_core(core)
    try:
        answer = toil_threading.explain_cpu_count(root)
    except ValueError as error:  # only a bad override the user set
        message = str(error)
        assert "PYTHON_CPU_COUNT" in message or "cpu_count" in message, message
        return "ValueError", message
    finally:
        _impl.use_core(before)
    assert answer.count >= 1
    return "count", (answer.count, answer.decided_by, [tuple(limit) for limit in answer.limits])


def test_the_walk_over_a_fuzzed_captured_system(tmp_path: Path) -> None:
    root = tmp_path / "root"

    @FUZZ
    @given(system=captured_systems())
    def check(system: dict[str, bytes]) -> None:
        for relative, data in system.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        answers = []
        for core in TWINS:
            answer, seconds = timed(lambda core=core: explained(core, root))
            assert seconds < BOUND_SECONDS, (core.__name__, system)
            answers.append(answer)
        assert all(answer == answers[0] for answer in answers), answers

    check()


# The override, against C's own strtol: CPython 3.13 reads PYTHON_CPU_COUNT with it.

_libc = ctypes.CDLL(None, use_errno=True)
_libc.strtol.restype = ctypes.c_long
_libc.strtol.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]


def strtol_count(text: str) -> int | None:
    """What CPython 3.13 makes of PYTHON_CPU_COUNT=text (Python/initconfig.c: strtol in
    base 10, nothing left over, no ERANGE, within a C int, at least 1): None if refused."""
    data = ctypes.create_string_buffer(text.encode())
    start = ctypes.addressof(data)
    end = ctypes.c_void_p()
    ctypes.set_errno(0)
    value = _libc.strtol(start, ctypes.byref(end), 10)
    whole = end.value == start + len(text.encode()) and ctypes.get_errno() == 0
    return value if whole and 1 <= value <= 2**31 - 1 else None


@FUZZ
@given(
    text=st.one_of(
        st.text(alphabet=" \t\n\v\f\r+-0123456789٣x.", max_size=30),
        st.text(max_size=12).filter(lambda text: "\0" not in text),
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
    )
)
def test_the_override_is_read_as_strtol_reads_it(text: str) -> None:
    if text == "default":
        return
    expected = strtol_count(text) if text.isascii() else None
    answer, seconds = timed(lambda: _cpu._c_int(text))
    assert seconds < BOUND_SECONDS
    assert (answer if answer is not None and answer >= 1 else None) == expected, text
    try:
        count = _cpu._override_count(text, "PYTHON_CPU_COUNT")
    except ValueError as error:
        assert str(error).startswith("PYTHON_CPU_COUNT")
        assert expected is None
    else:
        assert count == expected


@FUZZ
@given(argv=st.lists(st.text(alphabet="-XIEcm=_cpuont0123 ", max_size=12), max_size=8))
def test_a_captured_command_line_is_read_without_raising(argv: list[str]) -> None:
    option, ignores = _captured._interpreter_options(["python3", *argv])
    assert option is None or option is True or isinstance(option, str)
    assert isinstance(ignores, bool)


@pytest.mark.parametrize(
    "variable", ["TOIL_THREADING_LOCK_MAX_TRIES", "TOIL_THREADING_LOCK_BACKOFF"]
)
def test_a_retry_setting_is_a_number_in_range_or_a_named_error(
    variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = variable.endswith("TRIES")

    @FUZZ
    @given(
        text=st.one_of(
            st.text(alphabet="0123456789.٣+-_e inf", max_size=12),
            st.text(max_size=12).filter(lambda text: "\0" not in text),
            st.just("9" * 5000),
        )
    )
    def check(text: str) -> None:
        monkeypatch.setenv(variable, text)
        try:
            value, seconds = timed(lambda: _retry.setting(variable, whole, 1000))
        except ValueError as error:
            assert str(error).startswith(variable)
            return
        assert seconds < BOUND_SECONDS
        assert value is None or 0 < value <= 1000
        assert text.isascii() or value is None

    check()
