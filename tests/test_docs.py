"""The README and the documentation say what the package does: the example prints what
they show, every public name and every subcommand option is documented, links go to
pages that exist, and no path of the machine they were written on is left in them.

(The Sphinx build itself, with warnings as errors, is run by CI: it needs Sphinx.)
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CLI, linux_only

import toil_threading

SOURCES = Path(__file__).resolve().parent.parent
README = SOURCES / "README.md"
DOCS = SOURCES / "docs"
DOCS_SITE = "https://toil-threading.readthedocs.io/en/latest/"


def fenced_blocks(text: str, language: str) -> list[str]:
    """The contents of the ```language blocks of a Markdown text, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def written() -> dict[Path, str]:
    """The README and every page of the documentation, by path."""
    return {path: path.read_text() for path in [README, *sorted(DOCS.glob("*.md"))]}


def test_readme_is_at_most_200_lines() -> None:
    assert len(README.read_text().splitlines()) <= 200


def test_the_readme_and_the_docs_show_one_example() -> None:
    [readme_example] = fenced_blocks(README.read_text(), "python")
    getting_started = fenced_blocks((DOCS / "getting-started.md").read_text(), "python")
    assert getting_started == [readme_example]
    assert len(readme_example.splitlines()) <= 10


def label(line: str) -> str:
    """A line of the example's output less what differs between runs: its text up to
    the first colon, any process name in it masked."""
    return re.sub(r"tmp[a-z0-9_]{8}", "tmpNAME", line).split(":")[0]


@linux_only
def test_the_readme_example_prints_what_the_readme_shows(tmp_path: Path) -> None:
    readme = README.read_text()
    [example] = fenced_blocks(readme, "python")
    # The output shown is the first text block after the example.
    shown = fenced_blocks(readme[readme.index(example) :], "text")[0].splitlines()
    ran = subprocess.run(
        [sys.executable, "-I", "-c", example],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    printed = ran.stdout.splitlines()
    # Counts, process names and the sources deciding differ between runs and machines:
    # what labels each figure must not.
    assert list(map(label, printed)) == list(map(label, shown))
    name = re.fullmatch(r"this process is (tmp[a-z0-9_]{8}) \| alive: True", printed[-1])
    assert name, printed[-1]
    assert not (Path("/tmp") / name.group(1)).exists()  # destroyed at exit


def test_every_public_name_is_in_the_api_reference() -> None:
    reference = (DOCS / "api.md").read_text()
    documented = set(
        re.findall(
            r"^\.\. (?:auto(?!module)\w+|py:data):: toil_threading\.(\w+)", reference, re.MULTILINE
        )
    )
    assert set(toil_threading.__all__) | {"__version__"} <= documented
    assert documented <= set(toil_threading.__all__) | {"__version__"}  # nothing stale


def cli_help(*command: str) -> str:
    done = subprocess.run(
        [*CLI, *command, "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


def test_every_subcommand_option_and_exit_status_is_in_the_cli_page() -> None:
    page = (DOCS / "cli.md").read_text()
    overview = cli_help()
    listed = overview[overview.index("commands:") : overview.index("examples:")]
    subcommands = re.findall(r"^ {4}(\w+) ", listed, re.MULTILINE)
    assert len(subcommands) >= 4, listed
    for subcommand in subcommands:
        assert f"\n## {subcommand}\n" in page, f"no section for {subcommand}"
        options = set(re.findall(r"--[a-z][a-z-]*", cli_help(subcommand))) - {"--help"}
        for option in options:
            assert option in page, f"{subcommand} {option} is not in docs/cli.md"
    statuses = re.findall(r"^ {2}(\d+) ", overview[overview.index("exit status:") :], re.M)
    assert statuses
    for status in statuses:
        assert f"\n| {status} | " in page, f"exit status {status} is not in docs/cli.md"
    assert "--version" in page


def test_links_to_the_documentation_name_its_pages() -> None:
    pages = {path.stem for path in DOCS.glob("*.md")}
    for path, text in written().items():
        for page in re.findall(re.escape(DOCS_SITE) + r"([\w-]+)\.html", text):
            assert page in pages, f"{path.name} links to a page that does not exist: {page}"
    assert re.findall(re.escape(DOCS_SITE), README.read_text())


def test_files_the_readme_shows_exist() -> None:
    for target in re.findall(r"\]\(([\w./-]+)\)", README.read_text()):
        assert (SOURCES / target).is_file(), target


@pytest.mark.parametrize("path", sorted(written()), ids=lambda path: path.name)
def test_no_path_of_the_machine_it_was_written_on(path: Path) -> None:
    text = path.read_text()
    assert str(SOURCES) not in text
    assert not re.findall(r"/[\w./-]*/\.venv/", text)  # an interpreter found in a checkout


def test_the_changelog_starts_at_the_version_being_made() -> None:
    versions = re.findall(r"^## (\S+) ", (SOURCES / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert versions[0] == toil_threading.__version__


def test_the_classifiers_name_what_the_wheels_are_built_for() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 on
    with open(SOURCES / "pyproject.toml", "rb") as pyproject:
        settings = tomllib.load(pyproject)
    classifiers = settings["project"]["classifiers"]
    named = {c.rsplit(" :: ", 1)[1] for c in classifiers if re.search(r":: 3\.\d+$", c)}
    built = {f"3.{pattern[3:-2]}" for pattern in settings["tool"]["cibuildwheel"]["build"]}
    assert named == built
    assert settings["project"]["requires-python"] == f">={min(built, key=lambda v: int(v[2:]))}"
    workflow = SOURCES / "wheels.yml"
    if not workflow.exists():
        pytest.skip("not a checkout (an sdist carries no workflow)")
    runners = workflow.read_text()
    systems = {
        "Operating System :: POSIX :: Linux": "ubuntu-",
        "Operating System :: MacOS": "macos-",
    }
    for classifier, runner in systems.items():
        assert (classifier in classifiers) == (runner in runners), classifier
