"""cpu_count(): machine, affinity, cgroup quotas (v1 and v2, nested, containers), the
override, and staying current; the schedulers and the corpus have files of their own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import core_prelude, linux_only, python_with_core, skip_or_fail

import toil_threading
from toil_threading import _cgroups, _cpu_limits

pytestmark = linux_only  # cgroups, /proc/self/mountinfo, sched_getaffinity

V1_MOUNT = "25 20 0:22 / /sys/fs/cgroup/cpu rw,nosuid - cgroup cgroup rw,cpu\n"
V1_COMBINED_MOUNT = (
    "25 20 0:22 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n"
)
V1_OTHER_MOUNT = "26 20 0:23 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n"
V2_MOUNT = "30 20 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
ROOT_MOUNT = "20 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"


def host_cpus() -> int:
    """What the machine and this process's affinity allow, before any cgroup."""
    allowed = len(os.sched_getaffinity(0))
    online = os.sysconf("SC_NPROCESSORS_ONLN")
    return min(allowed, online)


# The machine every fake root stands for, unless a test says otherwise.
FAKE_CPUS = 8


def fake_root(
    tmp_path: Path,
    proc_cgroup: str,
    mountinfo: str,
    files: dict[str, str],
    environ: dict[str, str] | None = None,
    argv: tuple[str, ...] = ("python3", "job.py"),
) -> Path:
    """A directory standing in for / : proc/self/{cgroup,mountinfo,status,environ,cmdline},
    the online CPUs (FAKE_CPUS, all in the affinity mask) and the cgroup files."""
    root = tmp_path / "root"
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(proc_cgroup)
    (root / "proc/self/mountinfo").write_text(mountinfo)
    (root / "proc/self/status").write_text(
        f"Name:\tpython3\nCpus_allowed_list:\t0-{FAKE_CPUS - 1}\nMems_allowed_list:\t0\n"
    )
    (root / "proc/self/environ").write_text(
        "".join(f"{name}={value}\0" for name, value in (environ or {}).items())
    )
    (root / "proc/self/cmdline").write_text("".join(f"{word}\0" for word in argv))
    (root / "sys/devices/system/cpu").mkdir(parents=True)
    (root / "sys/devices/system/cpu/online").write_text(f"0-{FAKE_CPUS - 1}\n")
    for relative, text in files.items():
        path = root / relative.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def cgroup_limits(root: Path) -> list[tuple[int | None, str]]:
    """The cgroup levels of the explanation, as (cpus, directory as the process sees it)."""
    return [
        (limit.cpus, limit.detail.split(": ")[0])
        for limit in toil_threading.explain_cpu_count(root).limits
        if limit.source.startswith("cgroup v") and limit.detail.startswith("/")
    ]


def test_v1_quota_on_a_separate_cpu_mount(core: str, tmp_path: Path) -> None:
    root = fake_root(
        tmp_path,
        "5:memory:/jobs/7\n4:cpu:/jobs/7\n1:name=systemd:/jobs/7\n",
        ROOT_MOUNT + V1_OTHER_MOUNT + V1_MOUNT,
        {
            "/sys/fs/cgroup/cpu/jobs/7/cpu.cfs_quota_us": "50000\n",
            "/sys/fs/cgroup/cpu/jobs/7/cpu.cfs_period_us": "100000\n",
            "/sys/fs/cgroup/cpu/jobs/cpu.cfs_quota_us": "-1\n",
            "/sys/fs/cgroup/cpu/jobs/cpu.cfs_period_us": "100000\n",
            "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
            "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cgroup_limits(root) == [
        (1, "/sys/fs/cgroup/cpu/jobs/7"),
        (None, "/sys/fs/cgroup/cpu/jobs"),
        (None, "/sys/fs/cgroup/cpu"),
    ]
    assert toil_threading.explain_cpu_count(root).count == 1


def test_v1_combined_cpu_cpuacct_mount_rounds_up(core: str, tmp_path: Path) -> None:
    root = fake_root(
        tmp_path,
        "3:cpuacct,cpu:/batch\n",
        ROOT_MOUNT + V1_COMBINED_MOUNT,
        {
            "/sys/fs/cgroup/cpu,cpuacct/batch/cpu.cfs_quota_us": "150001\n",
            "/sys/fs/cgroup/cpu,cpuacct/batch/cpu.cfs_period_us": "100000\n",
        },
    )
    limits = cgroup_limits(root)
    assert limits[0] == (2, "/sys/fs/cgroup/cpu,cpuacct/batch")
    assert toil_threading.explain_cpu_count(root).count == 2


def test_v2_parent_tighter_than_child(core: str, tmp_path: Path) -> None:
    root = fake_root(
        tmp_path,
        "0::/user.slice/job.scope\n",
        ROOT_MOUNT + V2_MOUNT,
        {
            "/sys/fs/cgroup/user.slice/job.scope/cpu.max": "max 100000\n",
            "/sys/fs/cgroup/user.slice/cpu.max": "50000 100000\n",
        },
    )
    assert cgroup_limits(root)[:2] == [
        (None, "/sys/fs/cgroup/user.slice/job.scope"),
        (1, "/sys/fs/cgroup/user.slice"),
    ]
    assert toil_threading.explain_cpu_count(root).count == 1


def test_nested_limits_take_the_tightest(core: str, tmp_path: Path) -> None:
    root = fake_root(
        tmp_path,
        "0::/a/b/c\n",
        ROOT_MOUNT + V2_MOUNT,
        {
            "/sys/fs/cgroup/a/b/c/cpu.max": "300000 100000\n",
            "/sys/fs/cgroup/a/b/cpu.max": "100000 100000\n",
            "/sys/fs/cgroup/a/cpu.max": "200000 100000\n",
        },
    )
    assert [cpus for cpus, _ in cgroup_limits(root)] == [3, 1, 2, None]
    assert toil_threading.explain_cpu_count(root).count == 1


@pytest.mark.parametrize("text", ["lots\n", "", "50000 100000 extra\n", "max\n"])
def test_malformed_cpu_max_is_skipped(core: str, tmp_path: Path, text: str) -> None:
    root = fake_root(
        tmp_path, "0::/job\n", ROOT_MOUNT + V2_MOUNT, {"/sys/fs/cgroup/job/cpu.max": text}
    )
    limits = toil_threading.explain_cpu_count(root).limits
    job = [limit for limit in limits if limit.detail.startswith("/sys/fs/cgroup/job:")]
    assert job[0].cpus is None and "unreadable" in job[0].detail
    assert toil_threading.explain_cpu_count(root).count == FAKE_CPUS


def test_malformed_and_missing_v1_files_are_skipped(core: str, tmp_path: Path) -> None:
    root = fake_root(
        tmp_path,
        "4:cpu:/x/y\n",
        ROOT_MOUNT + V1_MOUNT,
        {
            "/sys/fs/cgroup/cpu/x/y/cpu.cfs_quota_us": "fifty\n",
            "/sys/fs/cgroup/cpu/x/y/cpu.cfs_period_us": "100000\n",
            "/sys/fs/cgroup/cpu/x/cpu.cfs_quota_us": "50000\n",  # no period beside it
        },
    )
    assert [cpus for cpus, _ in cgroup_limits(root)] == [None, None, None]
    assert toil_threading.explain_cpu_count(root).count == FAKE_CPUS


def test_container_whose_cgroup_path_is_not_under_the_mount(core: str, tmp_path: Path) -> None:
    # The container sees only its own cgroup, mounted at the usual place.
    root = fake_root(
        tmp_path,
        "0::/kubepods/burstable/pod42/c0ffee\n",
        ROOT_MOUNT + V2_MOUNT,
        {"/sys/fs/cgroup/cpu.max": "50000 100000\n"},
    )
    assert cgroup_limits(root) == [(1, "/sys/fs/cgroup")]
    assert toil_threading.explain_cpu_count(root).count == 1


def test_container_with_a_bind_mounted_subtree(core: str, tmp_path: Path) -> None:
    # Docker without a cgroup namespace: the mount's root is the container's own cgroup.
    root = fake_root(
        tmp_path,
        "4:cpu:/docker/abc123\n",
        ROOT_MOUNT + "25 20 0:22 /docker/abc123 /sys/fs/cgroup/cpu ro - cgroup cgroup rw,cpu\n",
        {
            "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "50000\n",
            "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cgroup_limits(root) == [(1, "/sys/fs/cgroup/cpu")]


def test_escaped_mount_point(core: str, tmp_path: Path) -> None:
    root = fake_root(
        tmp_path,
        "0::/job\n",
        ROOT_MOUNT + "30 20 0:26 / /cgroup\\040two rw - cgroup2 cgroup2 rw\n",
        {"/cgroup two/job/cpu.max": "50000 100000\n"},
    )
    assert cgroup_limits(root)[0] == (1, "/cgroup two/job")


UNIFIED_MOUNT = "31 20 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"


def test_hybrid_with_cpu_on_v1_reads_no_cgroup2_quota(core: str, tmp_path: Path) -> None:
    # The cpu controller is bound to one hierarchy at a time: with it on v1, no cgroup2
    # directory has cpu.max (a stray file here cannot be the kernel's).
    root = fake_root(
        tmp_path,
        "4:cpu:/a\n0::/b\n",
        ROOT_MOUNT + V1_MOUNT + UNIFIED_MOUNT,
        {
            "/sys/fs/cgroup/cpu/a/cpu.cfs_quota_us": "250000\n",
            "/sys/fs/cgroup/cpu/a/cpu.cfs_period_us": "100000\n",
            "/sys/fs/cgroup/unified/b/cpu.max": "50000 100000\n",
        },
    )
    answer = toil_threading.explain_cpu_count(root)
    [v2] = [limit for limit in answer.limits if limit.source == "cgroup v2"]
    assert v2.cpus is None and "on a v1 hierarchy (cgroup /a)" in v2.detail
    assert (answer.count, answer.decided_by) == (3, "cgroup v1")


def test_hybrid_with_cpu_on_v2_reads_the_unified_hierarchy(core: str, tmp_path: Path) -> None:
    root = fake_root(
        tmp_path,
        "5:memory:/a\n0::/b\n",
        ROOT_MOUNT + V1_OTHER_MOUNT + UNIFIED_MOUNT,
        {"/sys/fs/cgroup/unified/b/cpu.max": "50000 100000\n"},
    )
    answer = toil_threading.explain_cpu_count(root)
    assert answer.sources["cgroup v1"] is None
    assert cgroup_limits(root)[0] == (1, "/sys/fs/cgroup/unified/b")
    assert (answer.count, answer.decided_by) == (1, "cgroup v2")


def test_v2_without_cpu_max_is_no_limit_not_an_error(core: str, tmp_path: Path) -> None:
    root = fake_root(tmp_path, "0::/user.slice/session-1.scope\n", ROOT_MOUNT + V2_MOUNT, {})
    (root / "sys/fs/cgroup/user.slice/session-1.scope").mkdir(parents=True)
    levels = [
        limit
        for limit in toil_threading.explain_cpu_count(root).limits
        if limit.source == "cgroup v2"
    ]
    assert [limit.cpus for limit in levels] == [None, None, None]
    assert all("no cpu.max" in limit.detail for limit in levels)
    assert not any("unreadable" in limit.detail or "Errno" in limit.detail for limit in levels)


def test_v2_below_a_group_without_the_cpu_controller_is_not_read(
    core: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A group below the root without cpu.max has no cpu controller to pass on: nothing
    # under it can have cpu.max, so nothing there is read (a file planted there is not
    # the kernel's).
    root = fake_root(
        tmp_path,
        "0::/a/b/c\n",
        ROOT_MOUNT + V2_MOUNT,
        {"/sys/fs/cgroup/a/cpu.max": "max 100000\n", "/sys/fs/cgroup/a/b/c/cpu.max": "1 100000"},
    )
    (root / "sys/fs/cgroup/a/b").mkdir(exist_ok=True)
    read: list[str] = []
    real_read = _cpu_limits.Probe.read

    def counted(
        probe: _cpu_limits.Probe, function: Callable[..., Any], path: str, *more: object
    ) -> Any:
        read.append(path.lstrip("/"))
        return real_read(probe, function, path, *more)

    monkeypatch.setattr(_cpu_limits.Probe, "read", counted)
    answer = toil_threading.explain_cpu_count(root)
    assert cgroup_limits(root) == [
        (None, "/sys/fs/cgroup/a/b/c"),
        (None, "/sys/fs/cgroup/a/b"),
        (None, "/sys/fs/cgroup/a"),
        (None, "/sys/fs/cgroup"),
    ]
    [c, b, _, _] = [limit for limit in answer.limits if limit.source == "cgroup v2"]
    assert "not enabled at /sys/fs/cgroup/a/b, nor below it" in c.detail
    assert "no cpu.max" in b.detail
    assert "sys/fs/cgroup/a/b/c/cpu.max" not in read
    assert answer.count == FAKE_CPUS


@pytest.mark.parametrize("version", [1, 2])
def test_outside_the_cgroup_namespace_is_said_plainly(
    core: str, tmp_path: Path, version: int
) -> None:
    # The mount root's quota is the namespace root's, not this process's.
    line, mount, quota_file, quota = {
        1: ("4:cpu:/../../sshd.service\n", V1_MOUNT, "cpu/cpu.cfs_quota_us", "50000\n"),
        2: ("0::/../job-2.scope\n", V2_MOUNT, "cpu.max", "50000 100000\n"),
    }[version]
    root = fake_root(
        tmp_path,
        line,
        ROOT_MOUNT + mount,
        {f"/sys/fs/cgroup/{quota_file}": quota, "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000"},
    )
    answer = toil_threading.explain_cpu_count(root)
    [limit] = [limit for limit in answer.limits if limit.source == f"cgroup v{version}"]
    assert limit.cpus is None
    assert "outside its cgroup namespace" in limit.detail and "does not apply" in limit.detail
    assert (answer.count, answer.decided_by) == (FAKE_CPUS, "machine")


def test_cgroup_not_in_the_mounted_subtree(core: str, tmp_path: Path) -> None:
    root = fake_root(
        tmp_path,
        "4:cpu:/elsewhere/x\n",
        ROOT_MOUNT + "25 20 0:22 /docker/abc /sys/fs/cgroup/cpu ro - cgroup cgroup rw,cpu\n",
        {"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "50000\n"},
    )
    [limit] = [
        limit
        for limit in toil_threading.explain_cpu_count(root).limits
        if limit.source == "cgroup v1"
    ]
    assert limit.cpus is None and "/elsewhere/x is not in the part" in limit.detail


def test_no_cgroup_information_at_all(core: str, tmp_path: Path) -> None:
    # A root with nothing in it: nothing is taken from the live system instead.
    answer = toil_threading.explain_cpu_count(tmp_path)
    assert (answer.count, answer.decided_by) == (1, None)
    assert set(answer.sources.values()) == {None}
    assert [limit.source for limit in answer.limits] == list(_cpu_limits.SOURCES)
    assert "unreadable" in answer.limits[2].detail


def test_explanation_names_the_machine_and_affinity(core: str) -> None:
    answer = toil_threading.explain_cpu_count()
    assert answer.sources["machine"] == os.sysconf("SC_NPROCESSORS_ONLN")
    assert answer.sources["affinity"] == len(os.sched_getaffinity(0))
    assert answer.count == min(limit.cpus for limit in answer.limits if limit.cpus is not None)
    assert answer.decision is not None and answer.decision.cpus == answer.count
    assert answer.decision.source == answer.decided_by


def test_the_explanation_reads_as_sentences(core: str, tmp_path: Path) -> None:
    root = fake_root(
        tmp_path,
        "0::/job\n",
        ROOT_MOUNT + V2_MOUNT,
        {"/sys/fs/cgroup/job/cpu.max": "150000 100000\n"},
        environ={"PYTHON_CPU_COUNT": "1"},
    )
    answer = toil_threading.explain_cpu_count(root)
    assert str(answer.decision) == "override: 1 CPU (PYTHON_CPU_COUNT=1 in the environment)"
    [job] = [limit for limit in answer.limits if limit.detail.startswith("/sys/fs/cgroup/job")]
    assert (
        str(job) == "cgroup v2: 2 CPUs (/sys/fs/cgroup/job: quota 150000 us per 100000 us period)"
    )
    text = str(answer)
    assert text.startswith("cpu_count: 1 CPU, decided by override\n")
    assert "machine: 8 CPUs (8 CPUs listed in /sys/devices/system/cpu/online)" in text
    assert "slurm: no limit (not in a Slurm job: no SLURM_JOB_ID)" in text
    assert "decided_by='override'" in repr(answer)


def test_cpu_count_type_keeps_its_old_shape() -> None:
    # Existing users build and unpack these as before.
    limit = toil_threading.CpuLimit("cgroup v2", 2, "/sys/fs/cgroup: quota")
    source, cpus, detail = limit
    assert (source, cpus, detail) == (limit.source, limit.cpus, limit.detail)
    answer = toil_threading.CpuCount(2, [limit])
    assert (answer.count, answer.limits, answer.decided_by) == (2, [limit], "cgroup v2")


def test_parse_quota_cgroups(core: str, tmp_path: Path) -> None:
    quota, period, cpu_max = tmp_path / "q", tmp_path / "p", tmp_path / "cpu.max"
    quota.write_text("25000\n")
    period.write_text("100000\n")
    assert toil_threading.parse_quota_cgroups1(quota, period) == (25000, 100000)
    quota.write_text("-1\n")
    assert toil_threading.parse_quota_cgroups1(str(quota), str(period)) == (-1, 100000)
    cpu_max.write_text("max 100000\n")
    assert toil_threading.parse_quota_cgroups2(cpu_max) == (-1, 100000)
    cpu_max.write_text("150000 100000\n")
    assert toil_threading.parse_quota_cgroups2(cpu_max) == (150000, 100000)
    with pytest.raises(FileNotFoundError):
        toil_threading.parse_quota_cgroups1(tmp_path / "none", period)
    with pytest.raises(FileNotFoundError):
        toil_threading.parse_quota_cgroups2(tmp_path / "none")
    quota.write_text("a lot")
    with pytest.raises(ValueError):
        toil_threading.parse_quota_cgroups1(quota, period)
    cpu_max.write_text("150000\n")
    with pytest.raises(ValueError):
        toil_threading.parse_quota_cgroups2(cpu_max)


def fresh_cpu_count(core: str, prefix: list[str] | None = None, code: str = "") -> str:
    program = "import toil_threading\n" + code + "print(toil_threading.cpu_count())\n"
    if prefix:
        from conftest import core_prelude

        return subprocess.run(
            [*prefix, sys.executable, "-c", core_prelude(core) + program],
            capture_output=True,
            text=True,
            check=True,
            cwd="/",
        ).stdout.strip()
    child = python_with_core(core, program, stdout=subprocess.PIPE)
    return child.communicate(timeout=60)[0].strip()


def test_affinity_of_one_cpu(core: str) -> None:
    taskset = shutil.which("taskset")
    if taskset:
        assert fresh_cpu_count(core, [taskset, "-c", "0"]) == "1"
    assert fresh_cpu_count(core, code="import os\nos.sched_setaffinity(0, {0})\n") == "1"


def test_cpu_count_is_cached(core: str) -> None:
    out = fresh_cpu_count(
        core,
        code=(
            "import os\n"
            "first = toil_threading.cpu_count()\n"
            "os.sched_setaffinity(0, {0})\n"
            "assert toil_threading.cpu_count() == first\n"
            "assert toil_threading.explain_cpu_count().count == 1\n"
        ),
    )
    # What this process's cgroups and affinity allow, which the child shares.
    assert int(out) == toil_threading.explain_cpu_count().count


CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")


@pytest.fixture
def v1_cgroup() -> Iterator[Path]:
    """A real v1 cpu cgroup with a 0.5-CPU quota (50 ms per 100 ms), removed afterwards."""
    if not (CGROUP_V1_CPU / "cpu.cfs_quota_us").exists():
        skip_or_fail("no cgroup v1 cpu controller mounted at /sys/fs/cgroup/cpu")
    group = CGROUP_V1_CPU / f"toil-threading-test-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
    except OSError as error:
        skip_or_fail(f"cannot make a cgroup under /sys/fs/cgroup/cpu (needs root): {error}")
    try:
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text("50000")
        yield group
    finally:
        group.rmdir()


def run_in_cgroup(core: str, group: Path, code: str = "print(toil_threading.cpu_count())\n") -> str:
    program = core_prelude(core) + code
    # The shell moves itself into the cgroup, then becomes the interpreter.
    script = f'echo $$ > "{group}/cgroup.procs" && exec "$0" -c "$1"'
    return subprocess.run(
        ["sh", "-c", script, sys.executable, program],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    ).stdout.strip()


def test_real_v1_cgroup_with_half_a_cpu(core: str, v1_cgroup: Path) -> None:
    assert host_cpus() >= 1
    assert run_in_cgroup(core, v1_cgroup) == "1"


def test_real_v1_quota_on_the_parent_applies_to_the_child(core: str, v1_cgroup: Path) -> None:
    if host_cpus() < 2:
        pytest.skip("with one CPU a limit of 1 cannot be told from no limit")
    child = v1_cgroup / "inner"
    child.mkdir()
    try:
        assert (child / "cpu.cfs_quota_us").read_text().strip() == "-1"
        assert run_in_cgroup(core, child) == "1"
    finally:
        child.rmdir()


def test_real_v1_quota_explained(core: str, v1_cgroup: Path) -> None:
    code = "print(toil_threading.explain_cpu_count())\n"
    lines = run_in_cgroup(core, v1_cgroup, code).splitlines()
    assert lines[0] == "cpu_count: 1 CPU, decided by cgroup v1"
    v1 = [line.strip() for line in lines if line.strip().startswith("cgroup v1")]
    # The hierarchy's real root can hold no quota: it is named, not read.
    assert v1 == [
        f"cgroup v1: 1 CPU ({v1_cgroup}: quota 50000 us per 100000 us period)",
        f"cgroup v1: no limit ({CGROUP_V1_CPU}: the root of the hierarchy, where no CPU quota"
        " can be set)",
    ]


def test_import_and_cpu_count_import_nothing_third_party_or_slow(core: str) -> None:
    child = python_with_core(
        core,
        "import sys\ntoil_threading.cpu_count()\nprint(' '.join(sorted(sys.modules)))\n",
        stdout=subprocess.PIPE,
    )
    loaded = child.communicate(timeout=60)[0].split()
    ours = {"importlib", "__main__"}  # the core-choosing prelude uses importlib
    foreign = [
        name
        for name in loaded
        if name.split(".")[0] not in sys.stdlib_module_names
        and name.split(".")[0] not in ours
        # (an editable install of a checkout adds setuptools' finder)
        and not name.startswith(
            ("toil_threading", "_cython_", "cython_runtime", "_distutils_hack", "__editable__")
        )
    ]
    assert foreign == []
    # The cold-start promise: none of these slow standard modules is needed either.
    assert [
        slow for slow in ("typing", "logging", "threading", "re", "collections") if slow in loaded
    ] == []


# -- The override: PYTHON_CPU_COUNT and -X cpu_count, as CPython 3.13 reads them ---------


def override_root(tmp_path: Path, environ: dict[str, str], *argv: str) -> Path:
    """A captured 8-CPU system with a 1-CPU quota, the given environment and command line."""
    return fake_root(
        tmp_path,
        "0::/\n",
        ROOT_MOUNT + V2_MOUNT,
        {"/sys/fs/cgroup/cpu.max": "100000 100000\n"},
        environ=environ,
        argv=argv or ("python3", "job.py"),
    )


@pytest.mark.parametrize(
    ("environ", "argv", "count", "decided_by", "words"),
    [
        ({"PYTHON_CPU_COUNT": "3"}, (), 3, "override", "PYTHON_CPU_COUNT=3 in the environment"),
        ({"PYTHON_CPU_COUNT": "default"}, (), 1, "cgroup v2", "PYTHON_CPU_COUNT=default"),
        ({"PYTHON_CPU_COUNT": ""}, (), 1, "cgroup v2", "PYTHON_CPU_COUNT is empty"),
        ({}, (), 1, "cgroup v2", "PYTHON_CPU_COUNT is not set"),
        ({"PYTHON_CPU_COUNT": "3"}, ("python3", "-I", "job.py"), 1, "cgroup v2", "-E or -I"),
        ({"PYTHON_CPU_COUNT": "0"}, ("python3", "-E", "job.py"), 1, "cgroup v2", "ignored"),
        ({}, ("python3", "-X", "cpu_count=5", "job.py"), 5, "override", "-X cpu_count=5"),
        ({}, ("python3", "-IsXcpu_count=5"), 5, "override", "-X cpu_count=5"),
        (
            {"PYTHON_CPU_COUNT": "3"},
            ("python3", "-X", "cpu_count=12"),
            12,
            "override",
            "replacing PYTHON_CPU_COUNT=3",
        ),
        (
            {"PYTHON_CPU_COUNT": "3"},
            ("python3", "-Xcpu_count=default", "job.py"),
            1,
            "cgroup v2",
            "-X cpu_count=default: no override, replacing PYTHON_CPU_COUNT=3",
        ),
        # What follows the program is its own argument, not the interpreter's option.
        ({}, ("python3", "job.py", "-X", "cpu_count=5"), 1, "cgroup v2", "not set"),
        ({}, ("python3", "-c", "pass", "-X", "cpu_count=5"), 1, "cgroup v2", "not set"),
        ({}, ("python3", "-mtoil", "-X", "cpu_count=5"), 1, "cgroup v2", "not set"),
        ({}, ("python3", "-W", "ignore", "-X", "cpu_count=6"), 6, "override", "cpu_count=6"),
    ],
)
def test_override(
    core: str,
    tmp_path: Path,
    environ: dict[str, str],
    argv: tuple[str, ...],
    count: int,
    decided_by: str,
    words: str,
) -> None:
    answer = toil_threading.explain_cpu_count(override_root(tmp_path, environ, *argv))
    assert (answer.count, answer.decided_by) == (count, decided_by)
    [override] = [limit for limit in answer.limits if limit.source == "override"]
    assert words in override.detail
    # The override decides even above the quota; every other source is still reported.
    assert answer.sources["cgroup v2"] == 1 and answer.sources["machine"] == FAKE_CPUS


@pytest.mark.parametrize(
    "value",
    [
        *("0", "-2", "four", "3.5", "3 ", "٣", "3_0", "0x10", "2147483648"),
        *("99999999999999999999", "9" * 5000, " ", "+", "- 3"),
    ],
)
def test_a_bad_python_cpu_count_is_named(core: str, tmp_path: Path, value: str) -> None:
    # CPython 3.13 reads it with strtol and refuses what is left over, a value outside a C
    # int, and a count below 1 (Python/initconfig.c, config_init_cpu_count).
    root = override_root(tmp_path, {"PYTHON_CPU_COUNT": value})
    with pytest.raises(ValueError, match=r"^PYTHON_CPU_COUNT=") as raised:
        toil_threading.explain_cpu_count(root)
    assert len(str(raised.value)) < 200  # the value is named, cut short if long


@pytest.mark.parametrize(
    ("value", "count"),
    [(" 3", 3), ("+3", 3), ("\t\n 7", 7), ("0005", 5), ("2147483647", 2147483647)],
)
def test_python_cpu_count_is_read_as_cpython_reads_it(
    core: str, tmp_path: Path, value: str, count: int
) -> None:
    # strtol skips C's blanks and takes a sign (CPython 3.13 accepts " 3" and "+3").
    root = override_root(tmp_path, {"PYTHON_CPU_COUNT": value})
    answer = toil_threading.explain_cpu_count(root)
    assert (answer.count, answer.decided_by) == (count, "override")


@pytest.mark.parametrize("option", [("-X", "cpu_count=0"), ("-X", "cpu_count"), ("-Xcpu_count=x",)])
def test_a_bad_x_cpu_count_is_named(core: str, tmp_path: Path, option: tuple[str, ...]) -> None:
    root = override_root(tmp_path, {}, "python3", *option, "job.py")
    with pytest.raises(ValueError, match="-X cpu_count"):
        toil_threading.explain_cpu_count(root)


def test_a_bad_variable_is_refused_even_behind_the_option(core: str, tmp_path: Path) -> None:
    # CPython 3.13 reads the variable first and refuses a bad one before it looks at -X
    # cpu_count, which would replace it (Python/initconfig.c, config_init_cpu_count).
    root = override_root(tmp_path, {"PYTHON_CPU_COUNT": "0"}, "python3", "-X", "cpu_count=2")
    with pytest.raises(ValueError, match=r"^PYTHON_CPU_COUNT='0'"):
        toil_threading.explain_cpu_count(root)
    good = tmp_path / "good"
    good.mkdir()
    root = override_root(good, {"PYTHON_CPU_COUNT": "5"}, "python3", "-X", "cpu_count=2")
    assert toil_threading.explain_cpu_count(root).count == 2


def run_fresh(
    core: str, code: str, *, options: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run code in a fresh interpreter (with interpreter options) on the given core."""
    full_env = {key: value for key, value in os.environ.items() if key != "PYTHON_CPU_COUNT"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, *options, "-c", core_prelude(core) + code],
        capture_output=True,
        text=True,
        env=full_env,
        cwd="/",
        timeout=60,
        check=False,
    )


def fresh_count(core: str, **how: object) -> int:
    done = run_fresh(core, "print(toil_threading.cpu_count())\n", **how)  # type: ignore[arg-type]
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_python_cpu_count_in_a_fresh_interpreter(core: str) -> None:
    assert fresh_count(core, env={"PYTHON_CPU_COUNT": "5"}) == 5
    assert fresh_count(core, env={"PYTHON_CPU_COUNT": "default"}) == host_cpus()
    # Under -I (and -E) the interpreter ignores PYTHON_* variables; so does the package.
    assert fresh_count(core, options=("-I",), env={"PYTHON_CPU_COUNT": "5"}) == host_cpus()
    explained = run_fresh(
        core, "print(toil_threading.explain_cpu_count())\n", env={"PYTHON_CPU_COUNT": "5"}
    )
    assert "override: 5 CPUs (PYTHON_CPU_COUNT=5 in the environment)" in explained.stdout


def test_x_cpu_count_in_a_fresh_interpreter(core: str) -> None:
    assert fresh_count(core, options=("-X", "cpu_count=5")) == 5
    cancelled = fresh_count(
        core, options=("-X", "cpu_count=default"), env={"PYTHON_CPU_COUNT": "3"}
    )
    assert cancelled == host_cpus()


def test_a_bad_override_fails_the_call_not_the_import(core: str) -> None:
    code = (
        "try:\n"
        "    toil_threading.cpu_count()\n"
        "except ValueError as error:\n"
        "    print(error)\n"
        "try:\n"
        "    toil_threading.explain_cpu_count()\n"
        "except ValueError as error:\n"
        "    print(error)\n"
    )
    for how, name in (
        ({"env": {"PYTHON_CPU_COUNT": "0"}}, "PYTHON_CPU_COUNT"),
        ({"options": ("-X", "cpu_count=none")}, "-X cpu_count"),
    ):
        done = run_fresh(core, code, **how)  # type: ignore[arg-type]
        if sys.version_info >= (3, 13):
            # The interpreter itself refuses to start with these.
            assert done.returncode != 0 and "cpu_count" in done.stderr
            continue
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert len(lines) == 2 and all(line.startswith(name) for line in lines)


def test_an_environment_replaced_by_a_plain_dict(core: str) -> None:
    code = (
        "import os\n"
        "os.environ = {**os.environ, 'PYTHON_CPU_COUNT': '3'}\n"
        "print(toil_threading.cpu_count())\n"
    )
    done = run_fresh(core, code)
    assert (done.returncode, done.stdout, done.stderr) == (0, "3\n", "")


def test_cpu_count_keeps_toils_signature(core: str) -> None:
    assert toil_threading.cpu_count() >= 1
    with pytest.raises(TypeError):
        toil_threading.cpu_count(True)  # type: ignore[misc]
    assert toil_threading.cpu_count(refresh=True) == toil_threading.explain_cpu_count().count


# -- Staying current: checked once a second, walked again only when something changed ---


def test_answers_from_memory_within_the_second(core: str) -> None:
    code = (
        "import toil_threading._cpu as cpu\n"
        "first = cpu.cpu_count()\n"
        "def refuse(path):\n"
        "    raise AssertionError('read ' + path)\n"
        "cpu._read = refuse\n"
        "print(all(cpu.cpu_count() == first for _ in range(10000)))\n"
    )
    done = run_fresh(core, code)
    assert (done.returncode, done.stdout, done.stderr) == (0, "True\n", "")


def test_an_unchanged_system_is_checked_not_walked_again(core: str) -> None:
    code = (
        "import os, time, toil_threading._cpu as cpu\n"
        "cpu.cpu_count()\n"
        "walks, walk = [], cpu._walk\n"
        "def counted(probe):\n"
        "    walks.append(1)\n"
        "    return walk(probe)\n"
        "cpu._walk = counted\n"
        "time.sleep(1.1)\n"
        "cpu.cpu_count()\n"
        "print(len(walks))\n"
        "os.environ['PYTHON_CPU_COUNT'] = '7'\n"
        "time.sleep(1.1)\n"
        "print(len(walks), cpu.cpu_count())\n"
    )
    done = run_fresh(core, code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["0", "0 7"]


CHANGE_SEEN_LATER = """
import json, sys, time, toil_threading
first = toil_threading.cpu_count()
changed_at = time.monotonic()
{change}
soon = toil_threading.cpu_count()
soon_in_time = time.monotonic() - changed_at < 0.9
time.sleep(1.1)
later = toil_threading.cpu_count()
{change_back}
refreshed = toil_threading.cpu_count(refresh=True)
print(json.dumps([first, soon, soon_in_time, later, refreshed]))
"""


def check_change_seen_later(output: str, before: int, after: int) -> None:
    """cpu_count() keeps its answer for up to a second, then sees the change;
    refresh=True sees one at once."""
    first, soon, soon_in_time, later, refreshed = json.loads(output)
    assert first == before
    if soon_in_time:  # (a very slow machine may take a second over the change itself)
        assert soon == before
    assert later == after
    assert refreshed == before


def test_affinity_change_is_seen_after_a_second(core: str) -> None:
    if host_cpus() < 2:
        pytest.skip("with one CPU a mask of one cannot be told from no mask")
    code = CHANGE_SEEN_LATER.format(
        change=(
            "import os\nallowed = os.sched_getaffinity(0)\nos.sched_setaffinity(0, {min(allowed)})"
        ),
        change_back="os.sched_setaffinity(0, allowed)",
    )
    before = toil_threading.explain_cpu_count().count
    done = run_fresh(core, code)
    assert done.returncode == 0, done.stderr
    check_change_seen_later(done.stdout, before, 1)


def test_real_v1_quota_change_is_seen_after_a_second(core: str, v1_cgroup: Path) -> None:
    if host_cpus() < 2:
        pytest.skip("with one CPU a limit of 1 cannot be told from no limit")
    quota = v1_cgroup / "cpu.cfs_quota_us"
    code = CHANGE_SEEN_LATER.format(
        change=f"open({str(quota)!r}, 'w').write('-1')",
        change_back=f"open({str(quota)!r}, 'w').write('50000')",
    )
    check_change_seen_later(run_in_cgroup(core, v1_cgroup, code), 1, host_cpus())


def test_override_change_is_seen_after_a_second(core: str) -> None:
    code = CHANGE_SEEN_LATER.format(
        change="import os\nos.environ['PYTHON_CPU_COUNT'] = '9'",
        change_back="del os.environ['PYTHON_CPU_COUNT']",
    )
    done = run_fresh(core, code)
    assert done.returncode == 0, done.stderr
    check_change_seen_later(done.stdout, toil_threading.explain_cpu_count().count, 9)


def test_the_mount_table_is_read_again_only_when_the_mount_changed(
    core: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    toil_threading.explain_cpu_count()
    if not _cgroups._mounts:
        pytest.skip("this process's cgroup mount was not found")
    version, (point, mount_root, real_root, identity) = next(iter(_cgroups._mounts.items()))
    parsed: list[int] = []
    find = _cgroups._find_mount

    def counted(mounts: list[Any], version: int, path: str) -> tuple[str, str] | None:
        parsed.append(version)
        return find(mounts, version, path)

    monkeypatch.setattr(_cgroups, "_find_mount", counted)
    first = toil_threading.explain_cpu_count()
    assert parsed == []  # one stat of the mount point said it was still there
    monkeypatch.setitem(_cgroups._mounts, version, (point, mount_root, real_root, (-1, -1)))
    again = toil_threading.explain_cpu_count()
    assert parsed == [version]  # something else there: mountinfo read again
    assert again.limits == first.limits
    assert _cgroups._mounts[version] == (point, mount_root, real_root, identity)
