"""The corpus of captured systems (tests/data/cpu): every case through
explain_cpu_count(root=case), on both cores, against its expected.json."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

import toil_threading
from toil_threading import _cli

CORPUS = Path(__file__).parent / "data" / "cpu"
CASES = sorted(path.name for path in CORPUS.iterdir() if (path / "expected.json").is_file())


def expected(case: str) -> dict[str, Any]:
    return json.loads((CORPUS / case / "expected.json").read_text())  # type: ignore[no-any-return]


def test_the_corpus_is_all_there() -> None:
    assert len(CASES) == 39
    listed = (CORPUS / "README.md").read_text()
    assert [case for case in CASES if f"| `{case}` |" not in listed] == []
    for case in CASES:
        want = expected(case)
        assert set(want["sources"]) == set(toil_threading._cpu_limits.SOURCES), case
        assert ("raises" in want) != ("count" in want), case


@pytest.mark.parametrize("case", CASES)
def test_case(core: str, case: str) -> None:
    want = expected(case)
    if "raises" in want:
        with pytest.raises(ValueError, match=want["names"]):
            toil_threading.explain_cpu_count(CORPUS / case)
        return
    answer = toil_threading.explain_cpu_count(CORPUS / case)
    assert (answer.count, answer.decided_by) == (want["count"], want["decided_by"]), str(answer)
    assert answer.sources == want["sources"], str(answer)
    # The limit shown as deciding is the decided source's, with the count.
    assert answer.decision is not None
    assert (answer.decision.source, answer.decision.cpus) == (want["decided_by"], want["count"])


@pytest.mark.parametrize("case", [case for case in CASES if "raises" in expected(case)])
def test_a_failing_case_without_its_bad_setting(core: str, case: str, tmp_path: Path) -> None:
    # What the other sources give there, as its expected.json says, once the bad
    # setting is taken out.
    want = expected(case)
    root = tmp_path / case
    shutil.copytree(CORPUS / case, root)
    environ = root / "proc/self/environ"
    entries = environ.read_bytes().split(b"\0")
    environ.write_bytes(
        b"\0".join(entry for entry in entries if not entry.startswith(want["names"].encode()))
    )
    answer = toil_threading.explain_cpu_count(root)
    assert answer.sources == want["sources"], str(answer)


def test_nothing_is_taken_from_the_live_process(core: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A captured root is read from its files alone: this process's environment, options,
    # affinity, online CPUs and host name change nothing.
    monkeypatch.setenv("PYTHON_CPU_COUNT", "77")
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    monkeypatch.setitem(sys._xoptions, "cpu_count", "55")

    def refuse(*_: object) -> None:
        raise AssertionError("the live process was asked")

    for name in ("sched_getaffinity", "sysconf", "uname"):
        monkeypatch.setattr(os, name, refuse)
    for case in CASES:
        want = expected(case)
        if "raises" not in want:
            answer = toil_threading.explain_cpu_count(CORPUS / case)
            assert (answer.count, answer.sources) == (want["count"], want["sources"]), case


def test_the_command_line_explains_a_captured_system(
    core: str, capsys: pytest.CaptureFixture[str]
) -> None:
    case = CORPUS / "slurm-step-c4-no-constraincores"
    assert _cli.main(["cpus", "--explain", "--root", str(case)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "cpu_count: 4 CPUs, decided by slurm"
    [starred] = [line.split() for line in lines[2:] if line.split()[1].endswith("*")]
    assert starred[:2] == ["slurm", "4*"]
    assert "SLURM_CPUS_PER_TASK=4 for step 0 on node gpu-a7" in " ".join(starred)

    assert _cli.main(["cpus", "--json", "--root", str(case)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["cpus"], report["decided_by"]) == (4, "slurm")
    assert report["sources"] == expected(case.name)["sources"]
    assert [limit["source"] for limit in report["limits"] if limit["decided"]] == ["slurm"]

    assert _cli.main(["cpus", "--root", str(CORPUS / "python-cpu-count-invalid-zero")]) == 2
    assert "PYTHON_CPU_COUNT='0'" in capsys.readouterr().err
