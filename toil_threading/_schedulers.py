"""What a batch scheduler allotted to this host, for cpu_count(): Slurm, PBS/Torque, Grid
Engine, LSF and HTCondor, each from its own variables (the README states each rule).

Loaded only where one of them runs a job (see _cpu._scheduler_limits).  A figure counts
only where the variables clearly describe this host's share for this process: a wrong
figure is worse than none, since the smallest one wins.

A job's environment reaches every process started in it, so whatever it holds is read
with bounds: each figure is 1 to 10 ASCII digits and at most 2**31 - 1; Slurm's
compressed lists are searched for this host and counted, never expanded; the files the
variables name are read a line at a time with counters.  A figure that is malformed,
oversized or unreadable is ignored, and the limit's detail says which and why: nothing
here raises.
"""

from ._cpu_limits import (
    NO_HTCONDOR,
    NO_LSF,
    NO_PBS,
    NO_SGE,
    NO_SLURM,
    CpuLimit,
    Probe,
    unreadable,
)
from ._cpu_limits import tasks_in_words as _tasks

# A figure is 1 to 10 ASCII digits, checked before int() sees them, and at most a C int
# (what the schedulers keep their counts in).  A number in a Slurm bracket, part of a
# host's name, is at most 10 digits too.
_MOST_DIGITS = 10
_LARGEST = 2**31 - 1
# Slurm refuses a bracket range of more than 64K names (MAX_RANGE in its hostlist.c).
_SLURM_MOST_IN_RANGE = 64 * 1024
# How much of a value from outside a detail shows.
_SHOWN = 200
_DIGITS = "0123456789"
_HOST_NAME = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_." + _DIGITS


def _deleting(characters: str) -> dict[int, int | None]:
    """A str.translate table that deletes characters: what is left is all the others."""
    return str.maketrans("", "", characters)


_NOT_IN_HOST_LISTS = _deleting(_HOST_NAME + ",[]")  # host names between commas
_BRACKETS_ALONE = _deleting(_HOST_NAME + ",")
_NOT_IN_BRACKETS = _deleting(_DIGITS + "-,")
_NOT_IN_COUNTS = _deleting(_DIGITS + ",(x)")
_NOT_DIGITS = _deleting(_DIGITS)
# ASCII whitespace but the newline, as str.split() knows it, made spaces.
_SPACES = str.maketrans("\t\r\v\f\x1c\x1d\x1e\x1f", " " * 8)


def limits(probe: Probe) -> list[CpuLimit]:
    """Each scheduler's limit on this process, in the order of an explanation."""
    return [_slurm(probe), _pbs(probe), _sge(probe), _lsf(probe), _htcondor(probe)]


def _figures(texts: list[str]) -> list[int] | str:
    """The whole numbers texts write, or why one of them is not a figure: 1 to 10 ASCII
    digits, from 1 to 2**31 - 1.  Checked a list at a time, with whole-list operations
    (a list of counts can hold tens of thousands), and int() only sees short strings."""
    if "" in texts:
        return "empty"
    joined = "".join(texts)
    if not (joined.isascii() and joined.isdigit()):
        return "not a whole number in ASCII digits"
    if max(map(len, texts)) > _MOST_DIGITS:
        return f"more than {_MOST_DIGITS} digits"
    values = list(map(int, texts))
    if max(values) > _LARGEST:
        return f"above {_LARGEST}"
    if min(values) < 1:
        return "zero"
    return values


def _figure(text: str) -> int | str:
    """The whole number text writes, or why it is not a figure (see _figures)."""
    found = _figures([text])
    return found if isinstance(found, str) else found[0]


def _shown(text: str | None) -> str:
    """A value from outside as a detail shows it: as found (escaping is for whoever shows
    it to people, see toil_threading._escaping), cut short when long."""
    if text is None:
        return "(unset)"
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}... ({len(text)} characters)"


def _short(host: str) -> str:
    """A host name as schedulers' lists are compared: before the first dot, lower case."""
    return host.strip().partition(".")[0].lower()


def _searchable(text: str) -> str:
    """A file's text as it is searched here, in lower case: each line between "\n" and
    "\x1e" (whitespace, so no longer in it), its words one space apart, none at its ends.

    Made with whole-string operations only: a file may be 1 MiB of short lines (a node
    file has a line per CPU), too many to look at one by one.
    """
    text = text.lower().translate(_SPACES)
    while "  " in text:  # each pass halves every run of spaces
        text = text.replace("  ", " ")
    text = text.strip(" ").replace("\n ", "\n").replace(" \n", "\n")
    return "\n" + text.replace("\n", "\x1e\n") + "\x1e"


# -- Slurm's compressed lists, searched and counted, never expanded ----------------------
# The forms are those of slurm.conf(5), NodeName: names between commas, each with numeric
# ranges in brackets ("lx[15,18,32-33]", "rack[0-63]_blade[0-41]"), where leading zeros
# fix the number of digits ("linux[0000-1023]"); and of sbatch(1), OUTPUT ENVIRONMENT
# VARIABLES: SLURM_JOB_CPUS_PER_NODE is "72(x2),36", in the order of SLURM_JOB_NODELIST.
# What Slurm's own parser (src/common/hostlist.c) refuses is malformed here too: a
# bracket left open or nested, an empty name or range, a range that runs backwards or
# holds more than 64K names, text after a name's last bracket.  One form it accepts is
# refused as well: a bracket followed at once by digits or by another bracket
# ("n[1-2]0[1-3]", "n[1-2][3-4]"), where which digits belong to which number is not
# written down, so a search would have to try every split.  Slurm itself writes these
# variables with one bracket, at the end of each name.


def _host_position(nodes: str, short: str) -> tuple[int | None, int] | str:
    """(where this host's short name first comes in a Slurm host list, None if nowhere;
    how many names the list stands for), or why the list is malformed.

    "sn[101-103,107],gpu-a7" stands for sn101, sn102, sn103, sn107 and gpu-a7.  The list
    is walked from bracket to bracket: the names between brackets are compared as they
    are; a name with brackets stands for the product of its brackets' sizes, and is
    searched by _item_place where it starts as this host's name does.
    """
    split = _split_host_list(nodes.lower())
    if isinstance(split, str):
        return split
    outsides, insides, sizes = split
    # This host's name as a name with one bracket would write it: head -> number.
    numbers = {
        short[:end]: short[end:]
        for end in range(max(0, len(short) - _MOST_DIGITS), len(short))
        if short[end:].isascii() and short[end:].isdigit()
    }
    names = outsides[0].split(",")
    head = names.pop() if insides else ""  # the name in hand, up to its first bracket
    tried: set[tuple[str, ...]] = set()  # names with brackets searched in vain
    found = _index(names, short)
    position = len(names)  # how many names come before the name in hand
    count = 1  # how many names the name in hand stands for, so far
    first = 0  # the index of its first bracket
    for index, size in enumerate(sizes):
        count *= size
        follows, comma, rest = outsides[index + 1].partition(",")
        if not comma and index + 1 < len(sizes):
            continue  # the name goes on to its next bracket
        if follows:
            return f"{_shown(follows)!r} after the last bracket of a name"
        if count > _LARGEST:
            return f"more than {_LARGEST} names"
        if found is None:
            # Searched once for each distinct name: a list may repeat one many times.
            place = None
            if first == index and "." not in head:  # one bracket, the form Slurm writes
                name: tuple[str, ...] = (head, insides[index])
                if head in numbers and name not in tried:
                    tried.add(name)
                    place = _value_place(insides[index], numbers[head])
            elif short.startswith(head.partition(".")[0]):
                name = (head, *insides[first : index + 1], *outsides[first + 1 : index + 1])
                if name not in tried:
                    tried.add(name)
                    place = _item_place(short, name, sizes[first : index + 1], count)
            if place is not None:
                found = position + place
        position += count
        names = rest.split(",") if comma else []
        head = names.pop() if index + 1 < len(sizes) else ""
        if names and found is None:
            at = _index(names, short)
            found = None if at is None else position + at
        position += len(names)
        if position > _LARGEST:
            return f"more than {_LARGEST} names"
        count, first = 1, index + 1
    return found, position


def _split_host_list(text: str) -> tuple[list[str], list[str], list[int]] | str:
    """(the text outside the brackets and inside them, in turn, and how many values each
    bracket stands for) of a lower-case Slurm host list, or why it is malformed.

    Checked with whole-string operations first, so that each bracket only needs its
    ranges' numbers compared (_ranges_size).
    """
    stray = text.translate(_NOT_IN_HOST_LISTS)
    if stray:
        return f"{stray[0]!r} cannot be part of a host name"
    marks = text.translate(_BRACKETS_ALONE)
    if marks != "[]" * (len(marks) // 2):
        nested, unopened = marks.find("[["), marks.find("]]")
        if marks[0] == "]" or 0 <= unopened < nested or nested < 0 <= unopened:
            return "a ']' without its '['"
        return "a '[' inside brackets" if nested >= 0 else "a '[' never closed"
    parts = text.replace("]", "[").split("[")
    outsides, insides = parts[::2], parts[1::2]
    emptied = "[]".join(outsides)
    if ",," in f",{emptied},":
        return "an empty name"
    if "][" in emptied or any(f"]{digit}" in emptied for digit in _DIGITS):
        return "digits or a bracket right after a bracket"
    fault = _ranges_fault(",".join(insides)) if insides else ""
    if fault:
        return fault
    spans = [_ranges_size(inside) if "-" in inside else inside.count(",") + 1 for inside in insides]
    sizes = [span for span in spans if isinstance(span, int)]
    if len(sizes) < len(spans):
        return next(span for span in spans if isinstance(span, str))
    return outsides, insides, sizes


def _ranges_fault(ranges: str) -> str:
    """Why the ranges of a list's brackets (joined by commas) are malformed, or ""."""
    stray = ranges.translate(_NOT_IN_BRACKETS)
    if stray:
        return f"{stray[0]!r} in brackets"
    if ",," in f",{ranges},":
        return "an empty range"
    if ",-" in f",{ranges}" or "-," in f"{ranges}," or "--" in ranges.translate(_NOT_DIGITS):
        return "a range without its two numbers"
    if max(map(len, ranges.replace("-", ",").split(","))) > _MOST_DIGITS:
        return f"a number of more than {_MOST_DIGITS} digits in brackets"
    return ""


def _ranges_size(inside: str) -> int | str:
    """How many values a bracket's ranges such as "08-10,12" stand for, or why one of
    them is malformed (beyond what _split_host_list checks)."""
    size = 0
    for part in inside.split(","):
        first, _, last = part.partition("-")
        if not last:
            size += 1
            continue
        low, high = int(first), int(last)
        if high < low:
            return f"the range [{part}] runs backwards"
        # Slurm writes both ends with the first one's digits: n[08-10] or n[8-10].
        if len(last) != len(first) and (len(last) < len(first) or last[0] == "0"):
            return f"the range [{part}] pads its two ends differently"
        if high - low >= _SLURM_MOST_IN_RANGE:
            return f"the range [{part}] holds more than {_SLURM_MOST_IN_RANGE} names"
        size += high - low + 1
    return size


def _index(names: list[str], short: str) -> int | None:
    """Where a short host name first comes among names without brackets, or None."""
    if "." in "".join(names):
        names = [name.partition(".")[0] for name in names]
    return names.index(short) if short in names else None


def _item_place(short: str, name: tuple[str, ...], sizes: list[int], count: int) -> int | None:
    """Where short first comes among the short names that a name with brackets stands
    for, or None.  The name is its head, its brackets' insides, then the text between
    them; the brackets' sizes multiply to count.

    The names run through the brackets' values as an odometer does, the last bracket
    fastest: a name's place is the sum of each value's place in its bracket times the
    names that each value of that bracket stands for.  Each bracket's number is the run
    of digits at its place in short, since a bracket is followed by a non-digit or ends
    the name.  A short name ends at a dot: brackets after it keep their first value.
    """
    brackets = len(sizes)
    head, dot, _ = name[0].partition(".")
    at = len(head)
    place = 0
    weight = count
    for index, size in enumerate(sizes):
        if dot:
            break
        weight //= size
        window = short[at : at + _MOST_DIGITS + 1]
        digits = window[: len(window) - len(window.lstrip(_DIGITS))]
        follows = name[1 + brackets + index] if index + 1 < brackets else ""
        follows, dot, _ = follows.partition(".")
        if not short.startswith(follows, at + len(digits)):
            return None
        value_place = _value_place(name[1 + index], digits)
        if value_place is None:
            return None
        place += value_place * weight
        at += len(digits) + len(follows)
    return place if at == len(short) else None


def _value_place(inside: str, digits: str) -> int | None:
    """Where the number written as digits first comes among a bracket's values, or None."""
    if not 0 < len(digits) <= _MOST_DIGITS:
        return None
    if "-" not in inside:  # single numbers: the name's digits are one of them, as written
        listed = f",{inside},".find(f",{digits},")
        return None if listed < 0 else inside.count(",", 0, listed)
    value = int(digits)
    place = 0
    for part in inside.split(","):
        first, _, last = part.partition("-")
        low = int(first)
        high = int(last or first)
        # Zero padding is significant: node[01-10] holds node01, never node1.
        padded = len(digits) == len(first) or (len(digits) > len(first) and digits[0] != "0")
        if low <= value <= high and padded:
            return place + value - low
        place += high - low + 1
    return None


def _repeated_entry(text: str, index: int) -> tuple[int | None, int] | str:
    """(the entry at index, None past the end; how many entries) of Slurm's per-node
    counts, "72(x2),36" standing for 72, 72, 36; or why they are malformed."""
    stray = text.translate(_NOT_IN_COUNTS)
    if stray:
        return f"{stray[0]!r} in a list of counts"
    # Each part is a count, with a repeat after it or not: without their digits, the
    # parts are "" or "(x)", and the digits come before "(x" and before ")".
    shapes = set(text.translate(_NOT_DIGITS).split(","))
    ends = f"{text},"
    if not shapes <= {"", "(x)"} or ",(" in f",{text}" or ends.count(")") != ends.count("),"):
        return "a repeat not written as count(xtimes)"
    figures = _figures(text.replace("(x", ",").replace(")", "").split(","))
    if isinstance(figures, str):
        return f"a count or repeat: {figures}"
    parts = text.split(",")
    if len(parts) == len(figures):  # no repeats: a count per node
        return (figures[index] if index < len(figures) else None), len(figures)
    entry = None
    entries = 0
    for part in parts:
        count, _, times = part.partition("(x")
        repeats = int(times[:-1]) if times else 1
        if entry is None and index < entries + repeats:
            entry = int(count)
        entries += repeats
    if entries > _LARGEST:
        return f"more than {_LARGEST} entries"
    return entry, entries


class _Job:
    """A scheduler's variables as read for one limit: the figures ignored are noted,
    with why, and the limit's detail ends with them."""

    __slots__ = ("ignored", "probe", "source")

    def __init__(self, probe: Probe, source: str) -> None:
        self.probe = probe
        self.source = source
        self.ignored: list[str] = []

    def figure(self, name: str) -> int | None:
        """The positive whole number in the variable name; None if unset or ignored."""
        text = self.probe.env(name)
        if text is None:
            return None
        found = _figure(text)
        if isinstance(found, str):
            self.ignored.append(f"{name}={_shown(text)} ({found})")
            return None
        return found

    def limit(self, cpus: int | None, why: str) -> CpuLimit:
        if self.ignored:
            why = f"{why}; ignored: {'; '.join(self.ignored)}"
        return CpuLimit(self.source, cpus, why)

    def node_entry(self, short: str, nodes_name: str, counts_name: str) -> tuple[bool, int | None]:
        """(listed, this host's count) from a Slurm host list and its per-node counts.

        listed is False only where the host list is readable and lacks this host; the
        count is None where it cannot be told.
        """
        nodes = self.probe.env(nodes_name)
        if not nodes:
            return True, None
        found = _host_position(nodes, short)
        if isinstance(found, str):
            self.ignored.append(f"{nodes_name}={_shown(nodes)} ({found})")
            return True, None
        position, hosts = found
        if position is None:
            return False, None
        counts = self.probe.env(counts_name)
        if not counts:
            return True, None
        entry = _repeated_entry(counts, position)
        if isinstance(entry, str):
            self.ignored.append(f"{counts_name}={_shown(counts)} ({entry})")
            return True, None
        count, entries = entry
        if entries != hosts:
            why = f"{entries} entries for the {hosts} names of {nodes_name}"
            self.ignored.append(f"{counts_name}={_shown(counts)} ({why})")
            return True, None
        return True, count


def _slurm(probe: Probe) -> CpuLimit:
    env = probe.env
    job_id = env("SLURM_JOB_ID") or env("SLURM_JOBID")
    if not job_id:
        return NO_SLURM
    job = _Job(probe, "slurm")
    if env("SLURM_HET_SIZE"):
        why = f"job {_shown(job_id)} is heterogeneous (SLURM_HET_SIZE): no count per component"
        return job.limit(None, why)
    node = env("SLURMD_NODENAME")
    if not node:
        why = (
            f"SLURM_JOB_ID={_shown(job_id)} but no SLURMD_NODENAME: this process is not on a "
            "node of the job (an salloc shell on a login node?), so the variables describe "
            "another host"
        )
        return job.limit(None, why)
    host = probe.hostname()
    short = _short(host)
    if _short(node) != short:
        why = (
            f"SLURMD_NODENAME={_shown(node)} is not this host ({_shown(host)}): the variables "
            "came from elsewhere"
        )
        return job.limit(None, why)
    listed, job_cpus = job.node_entry(short, "SLURM_JOB_NODELIST", "SLURM_JOB_CPUS_PER_NODE")
    if not listed:
        why = f"this host is not in SLURM_JOB_NODELIST={_shown(env('SLURM_JOB_NODELIST'))}"
        return job.limit(None, why)
    per_node = f"SLURM_JOB_CPUS_PER_NODE={_shown(env('SLURM_JOB_CPUS_PER_NODE'))}"
    on_node = job.figure("SLURM_CPUS_ON_NODE")
    step = env("SLURM_STEP_ID") or env("SLURM_STEPID")
    if not step:
        # The batch script: the batch step holds every CPU of the job on its node.
        where = f"in the batch script on node {_shown(node)}"
        if on_node is not None:
            figure, why = on_node, f"SLURM_CPUS_ON_NODE={on_node} {where}"
        elif job_cpus is not None:
            figure, why = job_cpus, f"this node's entry of {per_node} {where}"
        else:
            return job.limit(None, f"no usable SLURM_CPUS_ON_NODE {where}")
    else:
        where = f"for step {_shown(step)} on node {_shown(node)}"
        _, tasks = job.node_entry(short, "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE")
        if tasks is None and env("SLURM_STEP_NUM_NODES") == "1":
            tasks = job.figure("SLURM_STEP_NUM_TASKS")
        per_task = job.figure("SLURM_CPUS_PER_TASK")
        # An inherited SLURM_CPUS_PER_TASK is the job's -c, which srun (22.05 on) does
        # not pass on: it counts only where the step's own figures confirm it.
        passed = job.figure("SRUN_CPUS_PER_TASK") == per_task
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
            figure, why = job_cpus, f"this node's entry of {per_node}"
        else:
            return job.limit(None, f"no usable SLURM_CPUS_ON_NODE {where}")
    if job_cpus is not None and job_cpus < figure:
        figure, why = job_cpus, f"{why}, capped by this node's {job_cpus} in {per_node}"
    return job.limit(figure, why)


# -- The other schedulers: their variables and the files they name ---------------------


def _node_lines(probe: Probe, variable: str, short: str) -> tuple[int, int] | str:
    """(lines naming this host, lines naming another) by first word, in the node file a
    variable names, or why it cannot be read."""
    path = probe.env(variable)
    if not path:
        return f"{variable} is not set"
    text = probe.read_named(path)
    if isinstance(text, int):
        return f"{variable} is unreadable ({_shown(path)}: {unreadable(text)})"
    return _lines_naming(text, short)


def _lines_naming(text: str, short: str) -> tuple[int, int]:
    """(lines of a node file whose first word names this host, alone or with its domain;
    lines that name another), counted in the whole text."""
    lines = _searchable(text)
    named = lines.count("\n") - lines.count("\n\x1e")  # lines that are not blank
    mine = sum(lines.count(f"\n{short}{end}") for end in ("\x1e", " ", ".")) if short else 0
    return mine, named - mine


def _slots(text: str, short: str) -> int | str:
    """This host's slots in a PE_HOSTFILE (lines of host, slots, queue, processor range),
    summed over its lines, or why one is not a figure.

    Split where this host's name starts a line, alone or with its domain, the text
    leaves the slots as the first word after the name (every word is made to end in a
    space, and a line in "\x1e").
    """
    lines = _searchable(text).replace("\x1e", " \x1e") if short else ""
    alone = [after.partition(" ")[0] for after in lines.split(f"\n{short} ")[1:]]
    with_domain = [after.split(" ", 2)[1] for after in lines.split(f"\n{short}.")[1:]]
    written = [word for word in alone + with_domain if word[0] != "\x1e"]  # not a line's end
    counts = _figures(written) if written else []
    return counts if isinstance(counts, str) else sum(counts)


def _ad_cpus(text: str) -> tuple[str, int | str] | None:
    """(the value of the first "Cpus = ..." in a machine ad, the figure it is or why it
    is not one), None where there is none (ClassAd names ignore case)."""
    lines = _searchable(text).replace(" =", "=").replace("= ", "=")
    at = lines.find("\ncpus=")
    if at < 0:
        return None
    value = lines[at + len("\ncpus=") : lines.find("\x1e", at)]
    return value, _figure(value)


def _pbs(probe: Probe) -> CpuLimit:
    env = probe.env
    job_id = env("PBS_JOBID")
    if not job_id:
        return NO_PBS
    job = _Job(probe, "pbs")
    kind = env("PBS_ENVIRONMENT")
    if kind not in ("PBS_BATCH", "PBS_INTERACTIVE"):
        why = (
            f"PBS_JOBID={_shown(job_id)} but PBS_ENVIRONMENT={_shown(kind)}: not a job's "
            "batch or interactive shell"
        )
        return job.limit(None, why)
    host = probe.hostname()
    lines = _node_lines(probe, "PBS_NODEFILE", _short(host))
    listed = f"PBS_NODEFILE={_shown(env('PBS_NODEFILE'))}"
    if not isinstance(lines, str) and not lines[0]:
        return job.limit(None, f"this host ({_shown(host)}) is not in {listed}")
    ppn = env("PBS_NUM_PPN")
    if ppn is not None:
        # Torque: the node file has a line per processor.
        if not isinstance(lines, str):
            why = f"this host ({_shown(host)}) has {lines[0]} lines, one per CPU, in {listed}"
            return job.limit(lines[0], why)
        if env("PBS_NUM_NODES") != "1":
            why = f"Torque job (PBS_NUM_PPN={_shown(ppn)}) on several nodes, and {lines}"
            return job.limit(None, why)
        count = job.figure("PBS_NUM_PPN")
        if count is None:
            return job.limit(None, f"a one-node Torque job without a usable count, and {lines}")
        return job.limit(count, f"PBS_NUM_PPN={count} for a one-node Torque job")
    ncpus = job.figure("NCPUS")
    if ncpus is None:
        return job.limit(None, f"PBS job {_shown(job_id)} without NCPUS or PBS_NUM_PPN")
    if isinstance(lines, str):
        return job.limit(None, f"NCPUS={ncpus}, but {lines}: the job may span other hosts")
    mine, others = lines
    if others or mine > ncpus:
        why = f"NCPUS={ncpus} is one chunk's, and {listed} lists other hosts too"
        return job.limit(None, why)
    return job.limit(ncpus, f"NCPUS={ncpus} for a job on this host alone ({listed})")


def _sge(probe: Probe) -> CpuLimit:
    env = probe.env
    job_id = env("JOB_ID")
    if not job_id or not (env("SGE_ROOT") or env("SGE_CELL")):
        return NO_SGE
    job = _Job(probe, "sge")
    nslots = env("NSLOTS")
    path = env("PE_HOSTFILE")
    if not path:
        nhosts = env("NHOSTS")
        serial = job.figure("NSLOTS")
        if serial is not None and (not nhosts or nhosts == "1"):
            return job.limit(serial, f"NSLOTS={serial} for job {_shown(job_id)} on one host")
        why = f"NSLOTS={_shown(nslots)} over NHOSTS={_shown(nhosts)}, and no PE_HOSTFILE"
        return job.limit(None, why)
    text = probe.read_named(path)
    if isinstance(text, int):
        return job.limit(None, f"PE_HOSTFILE={_shown(path)} unreadable ({unreadable(text)})")
    host = probe.hostname()
    short = _short(host)
    slots = _slots(text, short)
    if isinstance(slots, str):
        why = f"PE_HOSTFILE={_shown(path)}: a bad slot count on a line of this host's"
        return job.limit(None, f"{why} ({slots})")
    if not slots:
        return job.limit(None, f"this host ({_shown(host)}) is not in PE_HOSTFILE={_shown(path)}")
    why = (
        f"this host ({_shown(host)}) has {slots} slots in PE_HOSTFILE={_shown(path)} "
        f"(NSLOTS={_shown(nslots)} in all)"
    )
    return job.limit(slots, why)


def _lsf(probe: Probe) -> CpuLimit:
    env = probe.env
    if not env("LSB_JOBID"):
        return NO_LSF
    job = _Job(probe, "lsf")
    host = probe.hostname()
    short = _short(host)
    pairs = env("LSB_MCPU_HOSTS")
    listed = env("LSB_HOSTS")
    if pairs:
        words = pairs.split()
        counts = _figures(words[1::2]) if len(words) % 2 == 0 else "a host without its count"
        if isinstance(counts, str):
            why = f"LSB_MCPU_HOSTS={_shown(pairs)!r} is not 'host count ...' pairs ({counts})"
            return job.limit(None, why)
        hosts = zip(words[::2], counts, strict=True)
        slots = sum(count for name, count in hosts if _short(name) == short)
        source = f'LSB_MCPU_HOSTS="{_shown(pairs)}"'
    elif listed:
        slots = sum(_short(name) == short for name in listed.split())
        source = f'LSB_HOSTS="{_shown(listed)}"'
    else:
        lines = _node_lines(probe, "LSB_DJOB_HOSTFILE", short)
        if isinstance(lines, str):
            return job.limit(None, f"none of LSB_MCPU_HOSTS, LSB_HOSTS, LSB_DJOB_HOSTFILE: {lines}")
        slots = lines[0]
        source = f"LSB_DJOB_HOSTFILE={_shown(env('LSB_DJOB_HOSTFILE'))}"
    if not slots:
        return job.limit(None, f"this host ({_shown(host)}) is not in {source}")
    total = env("LSB_DJOB_NUMPROC")
    of = f" (LSB_DJOB_NUMPROC={_shown(total)} in all)" if total and total != str(slots) else ""
    return job.limit(slots, f"this host ({_shown(host)}) has {slots} slots in {source}{of}")


def _htcondor(probe: Probe) -> CpuLimit:
    path = probe.env("_CONDOR_MACHINE_AD")
    if not path:
        return NO_HTCONDOR
    text = probe.read_named(path)
    if isinstance(text, int):
        why = f"_CONDOR_MACHINE_AD={_shown(path)} unreadable ({unreadable(text)})"
        return CpuLimit("htcondor", None, why)
    where = f"({_shown(path)})"
    found = _ad_cpus(text)
    if found is None:
        return CpuLimit("htcondor", None, f"no Cpus in the machine ad {where}")
    value, cpus = found
    if isinstance(cpus, str):
        why = f"Cpus = {_shown(value)} in the machine ad {where} is not a whole number"
        return CpuLimit("htcondor", None, f"{why} ({cpus})")
    return CpuLimit("htcondor", cpus, f"Cpus = {cpus} in the slot's machine ad {where}")
