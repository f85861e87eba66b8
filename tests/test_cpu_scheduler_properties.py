"""Properties of the search in Slurm's compressed lists, on both cores: a host is found
where the expanded list has it, and any text at all is answered, quickly, without an
exception: through the search itself and through a whole walk over a captured system."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
from conftest import linux_only
from test_cpu_schedulers import captured, slurm_batch

import toil_threading
from toil_threading import _schedulers

hypothesis = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")

pytestmark = linux_only

# A fixed budget, no example database left in the checkout, and fixtures made once per
# test rather than once per example: each example rewrites the captured system.
budget = hypothesis.settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)


def expanded(nodes: str) -> list[str]:
    """Every name of a host list, the long way: each name with brackets expanded in
    full, as Slurm's scontrol show hostnames would print them."""
    names = []
    depth = start = 0
    for position, character in enumerate(nodes + ","):
        depth += {"[": 1, "]": -1}.get(character, 0)
        if character == "," and not depth:
            parts = nodes[start:position].replace("]", "[").split("[")
            start = position + 1
            values = [
                [
                    f"{value:0{len(first)}d}"
                    for first, _, last in (part.partition("-") for part in inside.split(","))
                    for value in range(int(first), int(last or first) + 1)
                ]
                for inside in parts[1::2]
            ]
            for chosen in itertools.product(*values):
                names.append("".join(a + b for a, b in zip(parts[::2], [*chosen, ""], strict=True)))
    return names


def slurm_limit(root: Path) -> toil_threading.CpuLimit:
    [slurm] = [
        limit for limit in toil_threading.explain_cpu_count(root).limits if limit.source == "slurm"
    ]
    return slurm


def short(name: str) -> str:
    return name.partition(".")[0].lower()


@st.composite
def bracket(draw: st.DrawFn) -> str:
    """A bracket as Slurm writes it: ranges whose two ends have the first one's digits."""
    ranges = []
    for _ in range(draw(st.integers(1, 3))):
        digits = draw(st.integers(1, 3))
        low = draw(st.integers(0, 12))
        high = low + draw(st.integers(0, 3))
        written = f"{low:0{digits}d}"
        ranges.append(written if high == low else f"{written}-{high:0{digits}d}")
    return "[" + ",".join(ranges) + "]"


@st.composite
def host_list(draw: st.DrawFn) -> str:
    """A host list of the forms Slurm writes and slurm.conf(5) shows: names, some with a
    domain, some with one or two brackets, with text between them that starts with a
    non-digit."""
    head = st.sampled_from(["n", "cn", "gpu-a", "Rack", "x1y", "", "sn.d"])
    between = st.sampled_from(["b", "-n", "_blade", ".ib", "x2"])
    names = []
    for _ in range(draw(st.integers(1, 4))):
        name = draw(head)
        brackets = draw(st.integers(0 if name else 1, 2))
        for index in range(brackets):
            name += draw(bracket()) + (draw(between) if index + 1 < brackets else "")
        names.append(name)
    return ",".join(names)


@budget
@hypothesis.given(nodes=host_list(), data=st.data())
def test_a_host_is_found_where_the_expanded_list_has_it(
    core: str, tmp_path: Path, nodes: str, data: st.DataObject
) -> None:
    names = [short(name) for name in expanded(nodes)]
    host = data.draw(st.sampled_from([*names, "n1", "cn01", "rack1b2", "elsewhere"]))
    place = names.index(host) if host in names else None
    assert _schedulers._host_position(nodes, host) == (place, len(names))
    # And through a walk: each name's count is its place plus one, under the 1000 CPUs of
    # SLURM_CPUS_ON_NODE, so the cap shows where the walk found this host.
    counts = ",".join(str(index + 1) for index in range(len(names)))
    environ = slurm_batch(
        host, SLURM_JOB_NODELIST=nodes, SLURM_JOB_CPUS_PER_NODE=counts, SLURM_CPUS_ON_NODE="1000"
    )
    slurm = slurm_limit(captured(tmp_path, environ, host))
    assert slurm.cpus == (None if place is None else place + 1), slurm


# Any text, and text made of what Slurm's lists are made of, to reach deeper.
ANY_TEXT = st.one_of(
    st.text(max_size=200).filter(lambda text: "\0" not in text),
    st.text(alphabet="nab01289[],-()x.²", max_size=60),
)


HOSTS = st.one_of(
    st.sampled_from(["n1", "n01", "a", "x10", "b2"]),
    st.text(max_size=20).filter(lambda text: "\0" not in text),
)


@budget
@hypothesis.given(text=ANY_TEXT, host=HOSTS)
def test_any_text_is_answered_at_once(core: str, tmp_path: Path, text: str, host: str) -> None:
    started = time.perf_counter()
    position = _schedulers._host_position(text, host)
    entry = _schedulers._repeated_entry(text, 1)
    assert time.perf_counter() - started < 0.050
    if not isinstance(position, str):
        place, names = position
        assert place is None or 0 <= place < names <= 2**31 - 1, position
    if not isinstance(entry, str):
        count, entries = entry
        assert (count is None) == (entries <= 1) and 1 <= (count or 1) <= 2**31 - 1, entry
    # And through a walk, as each of the variables that hold a list or a figure.
    environ = slurm_batch(
        host,
        SLURM_JOB_NODELIST=text,
        SLURM_JOB_CPUS_PER_NODE=text,
        SLURM_STEP_ID="0",
        SLURM_STEP_NODELIST=text,
        SLURM_STEP_TASKS_PER_NODE=text,
        SLURM_CPUS_PER_TASK=text,
    )
    slurm = slurm_limit(captured(tmp_path, environ, host))
    assert slurm.cpus is None or 1 <= slurm.cpus <= 8, slurm


# -- The files that variables name, searched whole: as a line-by-line reading says ------
# Lines split at "\n", words at ASCII whitespace (what the files hold), names compared
# before their first dot and in any case.

FILE_TEXT = st.one_of(
    st.text(alphabet="HosTn01.9 \t\r\v\f\x1c\x1f\n=Cpus-x", max_size=120),
    st.text(alphabet=st.characters(max_codepoint=127), max_size=120),
)
FILE_HOSTS = st.sampled_from(["host", "n0", "cpus", "x", "h.o"])


def first_words(text: str, most: int) -> list[list[str]]:
    """Each line's first words, at most most of them, the long way."""
    return [words for line in text.split("\n") if (words := line.split(None, most)[:most])]


@budget
@hypothesis.given(text=FILE_TEXT, host=FILE_HOSTS)
def test_node_file_lines_are_counted_as_read_line_by_line(core: str, text: str, host: str) -> None:
    mine = sum(short(words[0]) == host for words in first_words(text, 1))
    assert _schedulers._lines_naming(text, host) == (mine, len(first_words(text, 1)) - mine)


@budget
@hypothesis.given(text=FILE_TEXT, host=FILE_HOSTS)
def test_pe_hostfile_slots_are_summed_as_read_line_by_line(core: str, text: str, host: str) -> None:
    written = [slots for name, slots in pairs(text) if short(name) == host]
    found = _schedulers._slots(text, host)
    if all(figure(slots) for slots in written):
        assert found == sum(map(int, written))
    else:
        assert isinstance(found, str), found


@budget
@hypothesis.given(text=FILE_TEXT)
def test_a_machine_ad_gives_its_first_cpus_as_read_line_by_line(core: str, text: str) -> None:
    values = [value for name, value in assignments(text) if name.lower() == "cpus"]
    found = _schedulers._ad_cpus(text)
    if not values:
        assert found is None
    elif figure(values[0]):
        assert found == (values[0], int(values[0]))
    else:
        assert found is not None and isinstance(found[1], str), found


def pairs(text: str) -> list[tuple[str, str]]:
    """The first two words of each line that has two, the long way."""
    return [(words[0], words[1]) for words in first_words(text, 2) if len(words) == 2]


def assignments(text: str) -> list[tuple[str, str]]:
    """(name, value) of each line with an "=", whitespace runs made single spaces."""
    lines = [line.partition("=") for line in text.split("\n")]
    return [
        (" ".join(name.split()), " ".join(value.split())) for name, equals, value in lines if equals
    ]


def figure(text: str) -> bool:
    """Whether text is a figure: 1 to 10 ASCII digits, from 1 to 2**31 - 1."""
    return text.isascii() and text.isdigit() and len(text) <= 10 and 0 < int(text) < 2**31
