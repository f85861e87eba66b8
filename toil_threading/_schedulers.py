"""What a batch scheduler allotted to this host, for cpu_count(): Slurm, PBS/Torque, Grid
Engine, LSF and HTCondor, each from its own variables (the README states each rule).

Loaded only where one of them runs a job (see _cpu._scheduler_limits).  A figure counts
only where the variables clearly describe this host's share for this process: a wrong
figure is worse than none, since the smallest one wins.
"""

from __future__ import annotations

from errno import ENOENT

from ._cpu_limits import NO_HTCONDOR, NO_LSF, NO_PBS, NO_SGE, NO_SLURM, CpuLimit, unreadable
from ._cpu_limits import tasks_in_words as _tasks

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._cpu import AnyProbe as _AnyProbe


def _whole(text: str | None) -> int | None:
    """The positive whole number written in decimal digits, else None."""
    if text and text.isascii() and text.isdigit():
        value = int(text)
        return value if value > 0 else None
    return None


def limits(probe: _AnyProbe) -> list[CpuLimit]:
    """Each scheduler's limit on this process, in the order of an explanation."""
    return [_slurm(probe), _pbs(probe), _sge(probe), _lsf(probe), _htcondor(probe)]


def _short(host: str) -> str:
    """A host name as schedulers' lists are compared: before the first dot, lower case."""
    return host.strip().split(".", 1)[0].lower()


def _hostlist(text: str) -> list[str] | None:
    """Slurm's compressed host list ("sn[101-103,107],gpu-a7") expanded, None if malformed."""
    items = []
    depth = start = 0
    for position, character in enumerate(text):
        if character == "[":
            depth += 1
        elif character == "]":
            depth -= 1
        elif character == "," and depth == 0:
            items.append(text[start:position])
            start = position + 1
    items.append(text[start:])
    hosts: list[str] = []
    for item in items:
        names = _expand_hosts(item)
        if names is None:
            return None
        hosts += names
    return hosts


def _expand_hosts(item: str) -> list[str] | None:
    opening = item.find("[")
    if opening < 0:
        return [item] if item else None
    closing = item.find("]", opening)
    if closing < 0:
        return None
    tails = _expand_hosts(item[closing + 1 :]) if closing + 1 < len(item) else [""]
    if tails is None:
        return None
    names = []
    for part in item[opening + 1 : closing].split(","):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            return None
        for number in range(int(first), int(last if dash else first) + 1):
            # Zero padding is kept: node[01-03] is node01, node02, node03.
            names += [f"{item[:opening]}{number:0{len(first)}d}{tail}" for tail in tails]
    return names


def _repeated_counts(text: str) -> list[int] | None:
    """Slurm's "72(x2),36" expanded to [72, 72, 36], None if malformed."""
    counts = []
    for part in text.split(","):
        value, repeated, times_text = part.partition("(x")
        if repeated and not times_text.endswith(")"):
            return None
        count, times = _whole(value), _whole(times_text[:-1]) if repeated else 1
        if count is None or times is None:
            return None
        counts += [count] * times
    return counts


def _node_entry(host: str, nodes: str | None, counts: str | None) -> tuple[bool, int | None]:
    """(listed, this host's count) from a Slurm node list and its per-node counts.

    listed is False only where the node list is readable and lacks this host; the count
    is None where it cannot be told.
    """
    hosts = _hostlist(nodes) if nodes else None
    if hosts is None:
        return True, None
    short = _short(host)
    names = [_short(name) for name in hosts]
    if short not in names:
        return False, None
    expanded = _repeated_counts(counts) if counts else None
    if expanded is None or len(expanded) != len(names):
        return True, None
    return True, expanded[names.index(short)]


def _slurm(probe: _AnyProbe) -> CpuLimit:
    env = probe.env
    job = env("SLURM_JOB_ID") or env("SLURM_JOBID")
    if not job:
        return NO_SLURM
    if env("SLURM_HET_SIZE"):
        why = f"job {job} is heterogeneous (SLURM_HET_SIZE): no per-component count is known"
        return CpuLimit("slurm", None, why)
    node = env("SLURMD_NODENAME")
    if not node:
        why = (
            f"SLURM_JOB_ID={job} but no SLURMD_NODENAME: this process is not on a node of "
            "the job (an salloc shell on a login node?), so the variables describe another host"
        )
        return CpuLimit("slurm", None, why)
    host = probe.hostname()
    if _short(node) != _short(host):
        why = f"SLURMD_NODENAME={node} is not this host ({host}): the variables came from elsewhere"
        return CpuLimit("slurm", None, why)
    node_list, per_node = env("SLURM_JOB_NODELIST"), env("SLURM_JOB_CPUS_PER_NODE")
    listed, job_cpus = _node_entry(host, node_list, per_node)
    if not listed:
        return CpuLimit("slurm", None, f"this host is not in SLURM_JOB_NODELIST={node_list}")
    on_node = _whole(env("SLURM_CPUS_ON_NODE"))
    step = env("SLURM_STEP_ID") or env("SLURM_STEPID")
    if not step:
        # The batch script: the batch step holds every CPU of the job on its node.
        where = f"in the batch script on node {node}"
        if on_node is not None:
            figure, why = on_node, f"SLURM_CPUS_ON_NODE={on_node} {where}"
        elif job_cpus is not None:
            figure, why = (
                job_cpus,
                f"this node's entry of SLURM_JOB_CPUS_PER_NODE={per_node} {where}",
            )
        else:
            return CpuLimit("slurm", None, f"no SLURM_CPUS_ON_NODE {where}")
    else:
        where = f"for step {step} on node {node}"
        _, tasks = _node_entry(host, env("SLURM_STEP_NODELIST"), env("SLURM_STEP_TASKS_PER_NODE"))
        if tasks is None and env("SLURM_STEP_NUM_NODES") == "1":
            tasks = _whole(env("SLURM_STEP_NUM_TASKS"))
        per_task = _whole(env("SLURM_CPUS_PER_TASK"))
        # An inherited SLURM_CPUS_PER_TASK is the job's -c, which srun (22.05 on) does
        # not pass on: it counts only where the step's own figures confirm it.
        passed = _whole(env("SRUN_CPUS_PER_TASK")) == per_task
        if per_task and tasks and on_node and per_task * tasks <= on_node:
            confirmed = per_task * tasks == on_node or passed
        else:
            confirmed = False
        if confirmed and per_task and tasks:
            by = f"SLURM_CPUS_ON_NODE={on_node} for {_tasks(tasks)} here"
            if per_task * tasks != on_node:
                by = f"SRUN_CPUS_PER_TASK={per_task}"
            figure, why = per_task, f"SLURM_CPUS_PER_TASK={per_task} {where}, confirmed by {by}"
        elif on_node is not None:
            figure, why = on_node, f"SLURM_CPUS_ON_NODE={on_node} {where}"
            if per_task:
                tasks_here = _tasks(tasks) if tasks else "an unknown number of tasks"
                why += (
                    f"; SLURM_CPUS_PER_TASK={per_task} is the job's, inherited, not this "
                    f"step's: {per_task} CPUs x {tasks_here} here is not {on_node}"
                )
        elif job_cpus is not None:
            figure, why = job_cpus, f"this node's entry of SLURM_JOB_CPUS_PER_NODE={per_node}"
        else:
            return CpuLimit("slurm", None, f"no SLURM_CPUS_ON_NODE {where}")
    if job_cpus is not None and job_cpus < figure:
        figure, why = (
            job_cpus,
            f"{why}, capped by this node's {job_cpus} in SLURM_JOB_CPUS_PER_NODE",
        )
    return CpuLimit("slurm", figure, why)


def _host_lines(probe: _AnyProbe, variable: str) -> tuple[str | None, list[str] | None]:
    """(the file a variable names, its lines' first words as short host names)."""
    path = probe.env(variable)
    text = probe.read_named(path) if path else ENOENT
    if isinstance(text, int):
        return path, None
    return path, [_short(line.split()[0]) for line in text.split("\n") if line.split()]


def _pbs(probe: _AnyProbe) -> CpuLimit:
    env = probe.env
    job = env("PBS_JOBID")
    if not job:
        return NO_PBS
    kind = env("PBS_ENVIRONMENT")
    if kind not in ("PBS_BATCH", "PBS_INTERACTIVE"):
        why = f"PBS_JOBID={job} but PBS_ENVIRONMENT={kind}: not a job's batch or interactive shell"
        return CpuLimit("pbs", None, why)
    host = probe.hostname()
    path, hosts = _host_lines(probe, "PBS_NODEFILE")
    if hosts is not None and _short(host) not in hosts:
        return CpuLimit("pbs", None, f"this host ({host}) is not in PBS_NODEFILE={path}")
    ppn = env("PBS_NUM_PPN")
    if ppn is not None:
        # Torque: the node file has a line per processor.
        if hosts is not None:
            count = hosts.count(_short(host))
            why = f"this host ({host}) has {count} lines, one per CPU, in PBS_NODEFILE={path}"
            return CpuLimit("pbs", count, why)
        if env("PBS_NUM_NODES") == "1" and _whole(ppn):
            return CpuLimit("pbs", int(ppn), f"PBS_NUM_PPN={ppn} for a one-node Torque job")
        why = f"Torque job (PBS_NUM_PPN={ppn}) on several nodes, and PBS_NODEFILE unreadable"
        return CpuLimit("pbs", None, why)
    ncpus = _whole(env("NCPUS"))
    if ncpus is None:
        return CpuLimit("pbs", None, f"PBS job {job} without NCPUS or PBS_NUM_PPN")
    if hosts is None:
        why = f"NCPUS={ncpus}, but PBS_NODEFILE is unreadable: the job may span other hosts"
        return CpuLimit("pbs", None, why)
    if any(name != _short(host) for name in hosts) or len(hosts) > ncpus:
        why = f"NCPUS={ncpus} is one chunk's, and PBS_NODEFILE={path} lists other hosts too"
        return CpuLimit("pbs", None, why)
    return CpuLimit("pbs", ncpus, f"NCPUS={ncpus} for a job on this host alone ({path})")


def _sge(probe: _AnyProbe) -> CpuLimit:
    env = probe.env
    job = env("JOB_ID")
    if not job or not (env("SGE_ROOT") or env("SGE_CELL")):
        return NO_SGE
    nslots = env("NSLOTS")
    path = env("PE_HOSTFILE")
    if not path:
        nhosts = env("NHOSTS")
        slots = _whole(nslots)
        if slots is not None and (not nhosts or nhosts == "1"):
            return CpuLimit("sge", slots, f"NSLOTS={slots} for job {job} on one host")
        return CpuLimit("sge", None, f"NSLOTS={nslots} over NHOSTS={nhosts}, and no PE_HOSTFILE")
    text = probe.read_named(path)
    if isinstance(text, int):
        return CpuLimit("sge", None, f"PE_HOSTFILE={path} unreadable ({unreadable(text)})")
    host = probe.hostname()
    slots = 0
    for line in text.split("\n"):
        fields = line.split()
        if len(fields) >= 2 and _short(fields[0]) == _short(host):
            count = _whole(fields[1])
            if count is None:
                return CpuLimit("sge", None, f"PE_HOSTFILE={path}: bad slot count in {line!r}")
            slots += count
    if not slots:
        return CpuLimit("sge", None, f"this host ({host}) is not in PE_HOSTFILE={path}")
    why = f"this host ({host}) has {slots} slots in PE_HOSTFILE={path} (NSLOTS={nslots} in all)"
    return CpuLimit("sge", slots, why)


def _lsf(probe: _AnyProbe) -> CpuLimit:
    env = probe.env
    if not env("LSB_JOBID"):
        return NO_LSF
    host = probe.hostname()
    short = _short(host)
    pairs = env("LSB_MCPU_HOSTS")
    if pairs:
        words = pairs.split()
        counts = [_whole(count) for count in words[1::2]]
        if len(words) % 2 or None in counts:
            return CpuLimit("lsf", None, f"LSB_MCPU_HOSTS={pairs!r} is not 'host count ...' pairs")
        slots = sum(
            c or 0 for name, c in zip(words[::2], counts, strict=True) if _short(name) == short
        )
        source = f'LSB_MCPU_HOSTS="{pairs}"'
    else:
        listed = env("LSB_HOSTS")
        if listed:
            names: list[str] | None = [_short(name) for name in listed.split()]
            source = f'LSB_HOSTS="{listed}"'
        else:
            path, names = _host_lines(probe, "LSB_DJOB_HOSTFILE")
            source = f"LSB_DJOB_HOSTFILE={path}"
        if names is None:
            return CpuLimit("lsf", None, "none of LSB_MCPU_HOSTS, LSB_HOSTS, LSB_DJOB_HOSTFILE")
        slots = names.count(short)
    if not slots:
        return CpuLimit("lsf", None, f"this host ({host}) is not in {source}")
    total = env("LSB_DJOB_NUMPROC")
    of = f" (LSB_DJOB_NUMPROC={total} in all)" if total and total != str(slots) else ""
    return CpuLimit("lsf", slots, f"this host ({host}) has {slots} slots in {source}{of}")


def _htcondor(probe: _AnyProbe) -> CpuLimit:
    path = probe.env("_CONDOR_MACHINE_AD")
    if not path:
        return NO_HTCONDOR
    text = probe.read_named(path)
    if isinstance(text, int):
        why = f"_CONDOR_MACHINE_AD={path} unreadable ({unreadable(text)})"
        return CpuLimit("htcondor", None, why)
    for line in text.split("\n"):
        name, equals, value = line.partition("=")
        if equals and name.strip().lower() == "cpus":  # ClassAd names ignore case
            cpus = _whole(value.strip())
            if cpus is None:
                why = f"Cpus = {value.strip()} in the machine ad ({path}) is not a whole number"
                return CpuLimit("htcondor", None, why)
            return CpuLimit("htcondor", cpus, f"Cpus = {cpus} in the slot's machine ad ({path})")
    return CpuLimit("htcondor", None, f"no Cpus in the machine ad ({path})")
