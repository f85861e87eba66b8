"""cpu_count(): machine, affinity and cgroup quotas (v1 and v2, nested, containers)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import linux_only, python_with_core, skip_or_fail

import toil_threading

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


def fake_root(tmp_path: Path, proc_cgroup: str, mountinfo: str, files: dict[str, str]) -> Path:
    """A directory standing in for / : proc/self/{cgroup,mountinfo} and cgroup files."""
    root = tmp_path / "root"
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(proc_cgroup)
    (root / "proc/self/mountinfo").write_text(mountinfo)
    for relative, text in files.items():
        path = root / relative.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def cgroup_limits(root: Path) -> list[tuple[int | None, str]]:
    """The cgroup entries of the explanation, as (cpus, directory relative to root)."""
    found = []
    for limit in toil_threading.explain_cpu_count(root).limits:
        if limit.source.startswith("cgroup v"):
            directory = limit.detail.split(":")[0]
            found.append((limit.cpus, "/" + os.path.relpath(directory, root)))
    return found


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
    assert toil_threading.explain_cpu_count(root).count == min(2, host_cpus())


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
    job = [limit for limit in limits if limit.detail.startswith(str(root / "sys/fs/cgroup/job"))]
    assert job[0].cpus is None and "unreadable" in job[0].detail
    assert toil_threading.explain_cpu_count(root).count == host_cpus()


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
    assert toil_threading.explain_cpu_count(root).count == host_cpus()


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


def test_hybrid_v1_and_v2_are_both_read(core: str, tmp_path: Path) -> None:
    root = fake_root(
        tmp_path,
        "4:cpu:/a\n0::/b\n",
        ROOT_MOUNT + V1_MOUNT + "31 20 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
        {
            "/sys/fs/cgroup/cpu/a/cpu.cfs_quota_us": "-1\n",
            "/sys/fs/cgroup/cpu/a/cpu.cfs_period_us": "100000\n",
            "/sys/fs/cgroup/unified/b/cpu.max": "50000 100000\n",
        },
    )
    sources = [limit.source for limit in toil_threading.explain_cpu_count(root).limits]
    assert "cgroup v1" in sources and "cgroup v2" in sources
    assert toil_threading.explain_cpu_count(root).count == 1


def test_no_cgroup_information_at_all(core: str, tmp_path: Path) -> None:
    answer = toil_threading.explain_cpu_count(tmp_path)
    assert answer.count == host_cpus()
    assert [limit.source for limit in answer.limits] == ["machine", "affinity", "cgroup"]
    assert answer.limits[2].cpus is None


def test_explanation_names_the_machine_and_affinity(core: str) -> None:
    answer = toil_threading.explain_cpu_count()
    by_source = {limit.source: limit for limit in answer.limits}
    assert by_source["machine"].cpus == os.sysconf("SC_NPROCESSORS_ONLN")
    assert by_source["affinity"].cpus == len(os.sched_getaffinity(0))
    assert answer.count == min(limit.cpus for limit in answer.limits if limit.cpus is not None)


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


def run_in_cgroup(core: str, group: Path) -> str:
    from conftest import core_prelude

    program = core_prelude(core) + "print(toil_threading.cpu_count())\n"
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
