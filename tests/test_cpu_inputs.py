"""What cpu_count() reads from outside, made hostile: captured roots that try to lead the
walk out of them, cgroup files that are malformed or huge, and files named by a job's
variables that are endless, special or someone else's.  Every one is a reason in the
explanation (or, for a root that is not a directory, an error), on both cores, and the
compiled core's walk without openat2 (an older kernel) reads exactly what openat2 reads.
"""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    build_c,
    core_environment,
    core_prelude,
    linux_only,
    needs_root,
    skip_or_fail,
)
from test_cpu import FAKE_CPUS, ROOT_MOUNT, V1_MOUNT, V2_MOUNT, fake_root

import toil_threading
from toil_threading import CpuCount

pytestmark = linux_only

SECRET = "root:$6$NOT-FOR-YOUR-EYES:19000:0:99999:7:::"


def limits_of(answer: CpuCount, source: str) -> list[toil_threading.CpuLimit]:
    return [limit for limit in answer.limits if limit.source == source]


def secret_outside(tmp_path: Path) -> Path:
    """A file of someone's, outside the captured root, that looks like a cgroup quota."""
    secret = tmp_path / "secret"
    secret.write_text(f"50000 100000\n{SECRET}\n")
    return secret


def test_a_link_at_a_cgroup_file_is_not_followed(core: str, tmp_path: Path) -> None:
    secret = secret_outside(tmp_path)
    root = fake_root(tmp_path, "0::/job\n", ROOT_MOUNT + V2_MOUNT, {})
    (root / "sys/fs/cgroup/job").mkdir(parents=True)
    (root / "sys/fs/cgroup/job/cpu.max").symlink_to(secret)
    answer = toil_threading.explain_cpu_count(root)
    [job, _] = limits_of(answer, "cgroup v2")
    assert job.cpus is None and "cpu.max unreadable" in job.detail, job
    assert os.strerror(40) in job.detail  # ELOOP: a symbolic link, refused
    assert answer.count == FAKE_CPUS
    assert SECRET not in str(answer) and "50000" not in str(answer)


def test_a_link_in_the_middle_of_a_path_is_not_followed(core: str, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "cpu.max").write_text("50000 100000\n")
    root = fake_root(tmp_path, "0::/job\n", ROOT_MOUNT + V2_MOUNT, {})
    (root / "sys/fs/cgroup").mkdir(parents=True)
    (root / "sys/fs/cgroup/job").symlink_to(outside)
    answer = toil_threading.explain_cpu_count(root)
    assert answer.sources["cgroup v2"] is None, str(answer)
    assert answer.count == FAKE_CPUS


def test_a_mount_point_that_climbs_out_is_not_read(core: str, tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    escaping = "30 20 0:26 / /sys/../../.. rw - cgroup2 cgroup2 rw\n"
    root = fake_root(tmp_path, "0::/\n", ROOT_MOUNT + escaping, {})
    answer = toil_threading.explain_cpu_count(root)
    [level] = limits_of(answer, "cgroup v2")
    assert level.cpus is None and "outside the captured root" in level.detail, level


@pytest.mark.parametrize("named", ["/../outside.ad", "../outside.ad", "/proc/../../outside.ad"])
def test_a_file_a_captured_variable_names_is_read_inside_the_root(
    core: str, tmp_path: Path, named: str
) -> None:
    (tmp_path / "outside.ad").write_text("Cpus = 1\n")
    root = fake_root(tmp_path, "0::/\n", ROOT_MOUNT, {}, environ={"_CONDOR_MACHINE_AD": named})
    answer = toil_threading.explain_cpu_count(root)
    [condor] = limits_of(answer, "htcondor")
    assert condor.cpus is None and "outside the captured root" in condor.detail, condor
    assert answer.count == FAKE_CPUS


def test_a_file_a_captured_variable_names_is_read_beneath_the_root(
    core: str, tmp_path: Path
) -> None:
    # The same variable, naming a file that is inside the root: read from there.
    root = fake_root(
        tmp_path,
        "0::/\n",
        ROOT_MOUNT,
        {"/job/machine.ad": "Cpus = 3\n"},
        environ={"_CONDOR_MACHINE_AD": "/job/machine.ad"},
    )
    assert toil_threading.explain_cpu_count(root).sources["htcondor"] == 3


@pytest.mark.parametrize(
    ("proc_cgroup", "version"),
    [("4:cpu,cpuacct\n", 1), ("0::/a\0b\n", 2), ("x:cpu:/\n", 1), ("1:cpu:relative\n", 1)],
)
def test_a_malformed_membership_is_that_files_reason(
    core: str, tmp_path: Path, proc_cgroup: str, version: int
) -> None:
    root = fake_root(tmp_path, proc_cgroup, ROOT_MOUNT + V1_MOUNT + V2_MOUNT, {})
    answer = toil_threading.explain_cpu_count(root)
    for source in ("cgroup v1", "cgroup v2"):
        [limit] = limits_of(answer, source)
        assert limit.cpus is None
        assert limit.detail == "/proc/self/cgroup unreadable (not in its format)"
    # Everything else is still asked and answered.
    assert answer.count == FAKE_CPUS and answer.decided_by == "machine"


@pytest.mark.parametrize(
    ("cpu_max", "reason"),
    [
        ("² 100000\n", "not in its format"),
        ("50000 " + "1" * 5000 + "\n", "too long to be a figure of its kind"),
        ("50000 " + "1" * 30 + "\n", "not in its format"),
        ("50000 100000 7\n", "not in its format"),
        ("50000 0\n", "not in its format"),
        ("", "not in its format"),
    ],
)
def test_a_malformed_cpu_max_is_that_levels_reason(
    core: str, tmp_path: Path, cpu_max: str, reason: str
) -> None:
    root = fake_root(
        tmp_path,
        "0::/a/b\n",
        ROOT_MOUNT + V2_MOUNT,
        {"/sys/fs/cgroup/a/cpu.max": "200000 100000\n", "/sys/fs/cgroup/a/b/cpu.max": cpu_max},
    )
    answer = toil_threading.explain_cpu_count(root)
    [b, a, _] = limits_of(answer, "cgroup v2")
    assert b.cpus is None and b.detail == f"/sys/fs/cgroup/a/b: cpu.max unreadable ({reason})"
    assert a.cpus == 2  # the level above still counts
    assert answer.count == 2


@pytest.mark.parametrize(
    "quota", ["٣00000\n", "1e5\n", "+100000\n", " 100000\n", "100000 \n", "9" * 19 + "\n"]
)
def test_a_malformed_v1_quota_is_that_levels_reason(core: str, tmp_path: Path, quota: str) -> None:
    root = fake_root(
        tmp_path,
        "4:cpu:/job\n",
        ROOT_MOUNT + V1_MOUNT,
        {
            "/sys/fs/cgroup/cpu/job/cpu.cfs_quota_us": quota,
            "/sys/fs/cgroup/cpu/job/cpu.cfs_period_us": "100000\n",
        },
    )
    answer = toil_threading.explain_cpu_count(root)
    [job, _] = limits_of(answer, "cgroup v1")
    assert job.cpus is None
    assert job.detail == "/sys/fs/cgroup/cpu/job: cpu.cfs_quota_us unreadable (not in its format)"


def test_a_malformed_mount_table_is_its_reason(core: str, tmp_path: Path) -> None:
    root = fake_root(tmp_path, "0::/\n", ROOT_MOUNT + "30 20 0:26 / /sys/fs/cgroup\n", {})
    answer = toil_threading.explain_cpu_count(root)
    [level] = limits_of(answer, "cgroup v2")
    assert level.detail == "mountinfo unreadable (not in its format)"


def test_a_root_that_is_missing_or_not_a_directory_is_an_error(core: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        toil_threading.explain_cpu_count(tmp_path / "missing")
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        toil_threading.explain_cpu_count(tmp_path / "file")
    with pytest.raises(ValueError, match="root"):
        toil_threading.explain_cpu_count("")


def test_a_link_to_the_root_itself_is_the_callers_choice(core: str, tmp_path: Path) -> None:
    root = fake_root(tmp_path, "0::/\n", ROOT_MOUNT, {})
    (tmp_path / "link").symlink_to(root)
    assert toil_threading.explain_cpu_count(tmp_path / "link").count == FAKE_CPUS


def test_the_captured_root_is_let_go(core: str, tmp_path: Path) -> None:
    root = fake_root(tmp_path, "0::/\n", ROOT_MOUNT, {})
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        toil_threading.explain_cpu_count(root)
    assert len(os.listdir("/proc/self/fd")) == before


# The live process: files named by a job's variables.


def live_explanation(core: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """explain_cpu_count() in a fresh interpreter with env, timed, as JSON."""
    code = (
        "import json, time, toil_threading as t\n"
        "started = time.perf_counter(); answer = t.explain_cpu_count()\n"
        "print(json.dumps({'seconds': time.perf_counter() - started,"
        " 'limits': [list(limit) for limit in answer.limits]}))\n"
    )
    return subprocess.run(
        [sys.executable, "-I", "-c", code],
        env=core_environment(core, env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def named_file_limit(core: str, variable: str, path: str, **more: str) -> list[object]:
    done = live_explanation(core, {variable: path, **more})
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["seconds"] < 1.0  # generous: it is about 50 us
    source = {"_CONDOR_MACHINE_AD": "htcondor", "PE_HOSTFILE": "sge"}[variable]
    [limit] = [limit for limit in found["limits"] if limit[0] == source]
    return limit  # type: ignore[no-any-return]


SGE = {"JOB_ID": "7", "SGE_ROOT": "/opt/sge", "NSLOTS": "2"}


@pytest.mark.parametrize("variable", ["_CONDOR_MACHINE_AD", "PE_HOSTFILE"])
@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/proc/self/pagemap", ""),  # "regular", and 256 TB long: refused at once
        ("/dev/zero", "not a regular file"),
        ("/proc/self", "not a regular file"),
    ],
)
def test_a_named_file_that_never_ends_is_not_read(
    core: str, variable: str, path: str, reason: str
) -> None:
    _, cpus, detail = named_file_limit(core, variable, path, **SGE)
    assert cpus is None and "unreadable" in str(detail) and reason in str(detail), detail


@pytest.mark.parametrize("variable", ["_CONDOR_MACHINE_AD", "PE_HOSTFILE"])
def test_a_named_fifo_does_not_block(core: str, tmp_path: Path, variable: str) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    _, cpus, detail = named_file_limit(core, variable, str(fifo), **SGE)
    assert cpus is None and "not a regular file" in str(detail), detail


@pytest.mark.parametrize("variable", ["_CONDOR_MACHINE_AD", "PE_HOSTFILE"])
def test_a_named_file_too_long_is_not_read(core: str, tmp_path: Path, variable: str) -> None:
    big = tmp_path / "big"
    with big.open("w") as out:
        out.write("Cpus = 2\n" + "#" * (64 << 20))  # 64 MB: read, it would take a while
    _, cpus, detail = named_file_limit(core, variable, str(big), **SGE)
    assert cpus is None and "too long" in str(detail), detail


# The compiled core's walk where the kernel has no openat2.


@pytest.fixture(scope="session")
def no_openat2(tmp_path_factory: pytest.TempPathFactory) -> str:
    library = tmp_path_factory.mktemp("noopenat2") / "libnoopenat2.so"
    source = Path(__file__).with_name("noopenat2.c")
    return build_c(source, library, "-shared", "-fPIC", "-ldl")


def test_the_walk_without_openat2_reads_what_openat2_reads(tmp_path: Path, no_openat2: str) -> None:
    if importlib.util.find_spec("toil_threading._core_c") is None:
        skip_or_fail("no compiled core installed: its walk is what this compares")
    secret = secret_outside(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "cpu.max").write_text("50000 100000\n")
    (tmp_path / "outside.ad").write_text("Cpus = 1\n")
    root = fake_root(
        tmp_path,
        "0::/a/b/c\n",
        ROOT_MOUNT + V2_MOUNT,
        {"/sys/fs/cgroup/a/cpu.max": "300000 100000\n"},
        environ={"_CONDOR_MACHINE_AD": "/../outside.ad"},
    )
    (root / "sys/fs/cgroup/a/b").symlink_to(outside)
    (root / "sys/fs/cgroup/a/cpu.max.link").symlink_to(secret)
    code = (
        "import json, sys, toil_threading as t\n"
        "assert t.ACCELERATED\n"
        "print(json.dumps([list(limit) for limit in t.explain_cpu_count(sys.argv[1]).limits]))"
    )
    answers = []
    for preload in ({}, {"LD_PRELOAD": no_openat2}):
        done = subprocess.run(
            [sys.executable, "-I", "-c", code, str(root)],
            env=core_environment("compiled", preload),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        answers.append(json.loads(done.stdout))
    assert answers[0] == answers[1]
    assert [limit[1] for limit in answers[0] if limit[0] == "cgroup v2"] == [None, None, 3, None]


def test_a_mount_table_longer_than_a_page_is_read_whole(core: str, tmp_path: Path) -> None:
    # /proc's tables come a page or so per read(2): the reader goes on to the end.  A
    # private mount namespace gets a hundred more mounts, so its table is several pages.
    needs_root()
    code = (
        "import os, subprocess, sys\n"
        f"{core_prelude(core)}"
        "from toil_threading import _lockability\n"
        "for n in range(100):\n"
        "    point = os.path.join(sys.argv[1], f'm{n:03d}')\n"
        "    os.mkdir(point)\n"
        "    subprocess.run(['mount', '-t', 'tmpfs', 'none', point], check=True)\n"
        "with open('/proc/self/mountinfo', 'rb') as table:\n"
        "    lines = table.read().count(b'\\n')\n"
        "mounts = _lockability.read_mounts()\n"
        "print(lines, len(mounts), sum(m.mount_point.startswith(sys.argv[1]) for m in mounts))\n"
    )
    done = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            sys.executable,
            "-I",
            "-c",
            code,
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines, mounts, ours = map(int, done.stdout.split())
    assert lines == mounts and ours == 100, done.stdout


def test_a_fifo_in_a_captured_root_is_not_waited_on(core: str, tmp_path: Path) -> None:
    root = fake_root(tmp_path, "0::/job\n", ROOT_MOUNT + V2_MOUNT, {})
    (root / "sys/fs/cgroup/job").mkdir(parents=True)
    os.mkfifo(root / "sys/fs/cgroup/job/cpu.max")
    answer = toil_threading.explain_cpu_count(root)  # a blocking read would never return
    [job, _] = limits_of(answer, "cgroup v2")
    assert job.detail == "/sys/fs/cgroup/job: cpu.max unreadable (not a regular file)"


def test_a_cgroup_swapped_for_a_link_mid_walk_is_never_followed(
    core: str, tmp_path: Path, swapper: str
) -> None:
    # The captured system changes while it is read: its cgroup directory and a link to a
    # directory outside the root trade places, over and over.  Whatever instant a walk
    # meets, it reads the cgroup's own cpu.max or refuses the link: never the quota
    # outside, which would make the count 1.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "cpu.max").write_text("50000 100000\n")
    root = fake_root(
        tmp_path, "0::/job\n", ROOT_MOUNT + V2_MOUNT, {"/sys/fs/cgroup/job/cpu.max": "max 1\n"}
    )
    link = root / "sys/fs/cgroup/swapped"
    link.symlink_to(outside)
    swapping = subprocess.Popen(
        [swapper, str(root / "sys/fs/cgroup/job"), str(link), "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline or len(seen) < 2:
            assert time.monotonic() < deadline + 20, f"only {seen} seen"
            answer = toil_threading.explain_cpu_count(root)
            assert answer.count == FAKE_CPUS, str(answer)
            seen.add(limits_of(answer, "cgroup v2")[0].detail)
    finally:
        swapping.terminate()
        out, err = swapping.communicate(timeout=30)
    assert swapping.returncode == 0, err
    assert int(out) > 100  # it did swap, many times over
    # Both instants were met: the cgroup itself, and the link in its place, refused.
    assert "/sys/fs/cgroup/job: cpu.max is 'max 1'" in seen
    assert "/sys/fs/cgroup/job: cpu.max unreadable (Too many levels of symbolic links)" in seen
