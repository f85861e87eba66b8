"""cpu_count()'s batch-scheduler sources (Slurm, PBS/Torque, Grid Engine, LSF, HTCondor):
each counts only where its variables clearly describe this host's share."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import core_prelude, linux_only

import toil_threading
from toil_threading import _schedulers

pytestmark = linux_only

MACHINE_CPUS = 64


def captured(
    tmp_path: Path, environ: dict[str, str], hostname: str, files: dict[str, str] | None = None
) -> Path:
    """A captured 64-CPU host, no cgroup quota, with the environment, name and files given."""
    root = tmp_path / "root"
    for relative, text in {
        "proc/self/cgroup": "0::/\n",
        "proc/self/mountinfo": "30 20 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
        "proc/self/status": f"Cpus_allowed_list:\t0-{MACHINE_CPUS - 1}\n",
        "proc/self/environ": "".join(f"{name}={value}\0" for name, value in environ.items()),
        "proc/self/cmdline": "python3\0job.py\0",
        "proc/sys/kernel/hostname": hostname + "\n",
        "sys/devices/system/cpu/online": f"0-{MACHINE_CPUS - 1}\n",
        "sys/fs/cgroup/cgroup.controllers": "cpu memory\n",
        **(files or {}),
    }.items():
        path = root / relative.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def figure(root: Path, source: str) -> tuple[int | None, str]:
    """(figure, detail) of one scheduler source, after checking the count follows it."""
    answer = toil_threading.explain_cpu_count(root)
    [limit] = [limit for limit in answer.limits if limit.source == source]
    assert answer.count == (MACHINE_CPUS if limit.cpus is None else limit.cpus)
    return limit.cpus, limit.detail


def assert_figure(root: Path, source: str, cpus: int | None, words: str) -> None:
    """One scheduler source gives cpus, and says words in its detail."""
    found, detail = figure(root, source)
    assert (found, words in detail) == (cpus, True), detail


SLURM_JOB = {
    "SLURM_JOB_ID": "77",
    "SLURM_JOBID": "77",
    "SLURMD_NODENAME": "cn01",
    "SLURM_JOB_NODELIST": "cn[01-02]",
    "SLURM_JOB_CPUS_PER_NODE": "8(x2)",
}


@pytest.mark.parametrize(
    ("variables", "hostname", "cpus", "words"),
    [
        # The batch script holds every CPU of the job on its node; -c sizes future tasks.
        (
            {"SLURM_CPUS_ON_NODE": "8", "SLURM_CPUS_PER_TASK": "2"},
            "cn01",
            8,
            "SLURM_CPUS_ON_NODE=8 in the batch script on node cn01",
        ),
        ({}, "cn01", 8, "this node's entry of SLURM_JOB_CPUS_PER_NODE=8(x2)"),
        ({"SLURM_CPUS_ON_NODE": "8"}, "CN01.cluster.example.org", 8, "cn01"),
        ({"SLURM_CPUS_ON_NODE": "8"}, "login01", None, "is not this host (login01)"),
        ({"SLURM_CPUS_ON_NODE": "8", "SLURMD_NODENAME": ""}, "cn01", None, "no SLURMD_NODENAME"),
        ({"SLURM_CPUS_ON_NODE": "8", "SLURM_HET_SIZE": "2"}, "cn01", None, "heterogeneous"),
        (
            {"SLURM_CPUS_ON_NODE": "8", "SLURMD_NODENAME": "cn03"},
            "cn03",
            None,
            "not in SLURM_JOB_NODELIST=cn[01-02]",
        ),
        # A step whose -c is confirmed by its own CPUs on the node: 2 tasks x 2 = 4.
        (
            {
                "SLURM_STEP_ID": "3",
                "SLURM_CPUS_ON_NODE": "4",
                "SLURM_CPUS_PER_TASK": "2",
                "SLURM_STEP_NODELIST": "cn[01-02]",
                "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
            },
            "cn01",
            2,
            "confirmed by SLURM_CPUS_ON_NODE=4 for 2 tasks here",
        ),
        # Confirmed by SRUN_CPUS_PER_TASK, the documented way to pass -c to srun.
        (
            {
                "SLURM_STEP_ID": "3",
                "SLURM_CPUS_ON_NODE": "8",
                "SLURM_CPUS_PER_TASK": "2",
                "SRUN_CPUS_PER_TASK": "2",
                "SLURM_STEP_NUM_NODES": "1",
                "SLURM_STEP_NUM_TASKS": "1",
            },
            "cn01",
            2,
            "confirmed by SRUN_CPUS_PER_TASK=2",
        ),
        # Tasks on this node unknown: -c cannot be confirmed, the step's CPUs stand.
        (
            {"SLURM_STEP_ID": "3", "SLURM_CPUS_ON_NODE": "6", "SLURM_CPUS_PER_TASK": "2"},
            "cn01",
            6,
            "an unknown number of tasks",
        ),
        (
            {"SLURM_STEP_ID": "3", "SLURMD_NODENAME": "cn02"},
            "cn02",
            8,
            "this node's entry of SLURM_JOB_CPUS_PER_NODE",
        ),
        (
            {"SLURM_STEP_ID": "3", "SLURM_CPUS_ON_NODE": "16"},
            "cn01",
            8,
            "capped by this node's 8 in SLURM_JOB_CPUS_PER_NODE",
        ),
    ],
)
def test_slurm(
    core: str,
    tmp_path: Path,
    variables: dict[str, str],
    hostname: str,
    cpus: int | None,
    words: str,
) -> None:
    environ = {**SLURM_JOB, **variables}
    if variables.get("SLURMD_NODENAME") == "":
        del environ["SLURMD_NODENAME"]
    assert_figure(captured(tmp_path, environ, hostname), "slurm", cpus, words)


def test_slurm_old_job_id_name(core: str, tmp_path: Path) -> None:
    environ = {**SLURM_JOB, "SLURM_CPUS_ON_NODE": "3"}
    del environ["SLURM_JOB_ID"]
    assert figure(captured(tmp_path, environ, "cn01"), "slurm")[0] == 3


@pytest.mark.parametrize(
    ("text", "hosts"),
    [
        ("sn[101-103,107],gpu-a7", ["sn101", "sn102", "sn103", "sn107", "gpu-a7"]),
        ("node[01-03]", ["node01", "node02", "node03"]),
        ("rack[1-2]-n[08-09]", ["rack1-n08", "rack1-n09", "rack2-n08", "rack2-n09"]),
        ("solo", ["solo"]),
        ("x[1-", None),
        ("x[a-b]", None),
        ("a,,b", None),
    ],
)
def test_slurm_host_lists(text: str, hosts: list[str] | None) -> None:
    assert _schedulers._hostlist(text) == hosts


@pytest.mark.parametrize(
    ("text", "counts"),
    [("72(x2),36", [72, 72, 36]), ("4", [4]), ("4(x", None), ("x(x2)", None), ("0", None)],
)
def test_slurm_repeated_counts(text: str, counts: list[int] | None) -> None:
    assert _schedulers._repeated_counts(text) == counts


PBS_JOB = {"PBS_JOBID": "12.server", "PBS_ENVIRONMENT": "PBS_BATCH", "PBS_NODEFILE": "/aux/12"}


@pytest.mark.parametrize(
    ("variables", "nodefile", "cpus", "words"),
    [
        # Torque: this host's lines, wherever it sits in a multi-node file.
        ({"PBS_NUM_PPN": "3"}, "a01\nn017.example.org\nn017\nb02\nn017\n", 3, "3 lines"),
        ({"PBS_NUM_PPN": "4", "PBS_NUM_NODES": "1"}, None, 4, "PBS_NUM_PPN=4 for a one-node"),
        ({"PBS_NUM_PPN": "4", "PBS_NUM_NODES": "2"}, None, None, "on several nodes"),
        # PBS Pro: NCPUS only for a job on this host alone.
        ({"NCPUS": "6"}, "n017\n", 6, "NCPUS=6 for a job on this host alone"),
        ({"NCPUS": "6"}, "n017\nn018\n", None, "lists other hosts too"),
        ({"NCPUS": "6"}, None, None, "PBS_NODEFILE is unreadable"),
        ({"NCPUS": "6"}, "n018\n", None, "is not in PBS_NODEFILE"),
        ({"NCPUS": "6", "PBS_ENVIRONMENT": "PBS_OTHER"}, "n017\n", None, "PBS_ENVIRONMENT"),
        ({"PBS_NP": "16", "OMP_NUM_THREADS": "16"}, "n017\n", None, "without NCPUS"),
    ],
)
def test_pbs(
    core: str,
    tmp_path: Path,
    variables: dict[str, str],
    nodefile: str | None,
    cpus: int | None,
    words: str,
) -> None:
    files = {} if nodefile is None else {"aux/12": nodefile}
    assert_figure(captured(tmp_path, {**PBS_JOB, **variables}, "n017", files), "pbs", cpus, words)


SGE_JOB = {"JOB_ID": "4711", "SGE_ROOT": "/opt/sge"}


@pytest.mark.parametrize(
    ("variables", "hostfile", "cpus", "words"),
    [
        ({"NSLOTS": "2", "NHOSTS": "1"}, None, 2, "NSLOTS=2 for job 4711 on one host"),
        ({"NSLOTS": "2"}, None, 2, "on one host"),
        ({"NSLOTS": "16", "NHOSTS": "2"}, None, None, "no PE_HOSTFILE"),
        (
            {"NSLOTS": "16", "PE_HOSTFILE": "/spool/pe"},
            "node07.x 4 a.q@node07 UNDEFINED\nnode12 10 a.q@node12 UNDEFINED\n"
            "node07 2 b.q@node07 UNDEFINED\n",
            6,
            "6 slots in PE_HOSTFILE=/spool/pe (NSLOTS=16 in all)",
        ),
        ({"NSLOTS": "4", "PE_HOSTFILE": "/spool/pe"}, "node12 4 a.q UNDEFINED\n", None, "not in"),
        ({"NSLOTS": "4", "PE_HOSTFILE": "/spool/pe"}, None, None, "unreadable"),
        ({"NSLOTS": "4", "PE_HOSTFILE": "/spool/pe"}, "node07 many a.q\n", None, "bad slot"),
    ],
)
def test_sge(
    core: str,
    tmp_path: Path,
    variables: dict[str, str],
    hostfile: str | None,
    cpus: int | None,
    words: str,
) -> None:
    files = {} if hostfile is None else {"spool/pe": hostfile}
    assert_figure(captured(tmp_path, {**SGE_JOB, **variables}, "node07", files), "sge", cpus, words)


def test_sge_needs_its_root(core: str, tmp_path: Path) -> None:
    # JOB_ID alone is too common a name to mean Grid Engine.
    assert figure(captured(tmp_path, {"JOB_ID": "3", "NSLOTS": "2"}, "node07"), "sge")[0] is None


@pytest.mark.parametrize(
    ("variables", "hostfile", "cpus", "words"),
    [
        ({"LSB_MCPU_HOSTS": "ib-c02 2 ib-c01 6", "LSB_DJOB_NUMPROC": "8"}, None, 6, "in all"),
        ({"LSB_MCPU_HOSTS": "ib-c02 2"}, None, None, "is not in LSB_MCPU_HOSTS"),
        ({"LSB_MCPU_HOSTS": "ib-c01 six"}, None, None, "not 'host count ...' pairs"),
        ({"LSB_HOSTS": "ib-c01 ib-c01 ib-c02"}, None, 2, 'LSB_HOSTS="ib-c01 ib-c01 ib-c02"'),
        ({"LSB_DJOB_HOSTFILE": "/h"}, "ib-c01\nib-c01\nib-c01\n", 3, "LSB_DJOB_HOSTFILE=/h"),
        ({"LSB_DJOB_NUMPROC": "8"}, None, None, "none of LSB_MCPU_HOSTS"),
    ],
)
def test_lsf(
    core: str,
    tmp_path: Path,
    variables: dict[str, str],
    hostfile: str | None,
    cpus: int | None,
    words: str,
) -> None:
    files = {} if hostfile is None else {"h": hostfile}
    assert_figure(
        captured(tmp_path, {"LSB_JOBID": "9", **variables}, "ib-c01", files), "lsf", cpus, words
    )


@pytest.mark.parametrize(
    ("ad", "cpus", "words"),
    [
        ('TotalCpus = 64.0\nCPUS = 2\nName = "slot1"\n', 2, "Cpus = 2 in the slot's machine ad"),
        ("Cpus = RequestCpus\n", None, "is not a whole number"),
        ("TotalCpus = 64\n", None, "no Cpus in the machine ad"),
        (None, None, "unreadable"),
    ],
)
def test_htcondor(core: str, tmp_path: Path, ad: str | None, cpus: int | None, words: str) -> None:
    files = {} if ad is None else {"scratch/.machine.ad": ad}
    # OMP_NUM_THREADS and its kin are set for many reasons: they are not read.
    environ = {"_CONDOR_MACHINE_AD": "/scratch/.machine.ad", "OMP_NUM_THREADS": "1"}
    assert_figure(captured(tmp_path, environ, "wn1", files), "htcondor", cpus, words)


def test_a_scheduler_in_this_process_environment(core: str) -> None:
    # The live process reads its own os.environ, including changes made in it.
    code = (
        "import os, toil_threading\n"
        "print(toil_threading.cpu_count())\n"
        "os.environ['SLURM_CPUS_ON_NODE'] = '1'\n"
        "answer = toil_threading.explain_cpu_count()\n"
        "print(answer.count, answer.decided_by)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHON_CPU_COUNT"}
    env.update(SLURM_JOB_ID="5", SLURMD_NODENAME=os.uname().nodename, SLURM_CPUS_ON_NODE="é")
    done = subprocess.run(
        [sys.executable, "-c", core_prelude(core) + code],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    before = toil_threading.explain_cpu_count().count
    assert done.stdout.splitlines() == [str(before), "1 slurm"]
