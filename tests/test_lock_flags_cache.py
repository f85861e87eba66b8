"""The per-filesystem table of lock flags, shared between threads.

Each core keeps how to lock on each filesystem it met (its device) in a table of
LOCK_FLAGS_KEPT slots, reused in turn; the compiled core reads it without the GIL on its
common paths while another thread may be writing a slot.  Threads locking on more
filesystems than there are slots, half of which need a record lock besides the flock,
must never lock one filesystem by another's flags.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import linux_only, python_with_core, skip_or_fail

from toil_threading._protocol import LOCK_FLAGS_KEPT

pytestmark = linux_only

# ramfs is given a record lock besides the flock (as GPFS gets one), tmpfs is local.
VERDICTS = {"TOIL_THREADING_LOCK_VERDICTS": "ramfs=node/cluster"}
EACH_KIND = LOCK_FLAGS_KEPT // 2 + 2  # both kinds together overflow the table


@pytest.fixture
def filesystems() -> Iterator[list[tuple[Path, bool]]]:
    """Fresh tmpfs and ramfs mounts, each with whether it needs a record lock."""
    if os.geteuid() != 0:
        skip_or_fail("needs root, to mount filesystems")
    with tempfile.TemporaryDirectory(prefix="toil-threading-mounts-") as top:
        made: list[tuple[Path, bool]] = []
        try:
            for kind in ("tmpfs", "ramfs"):
                for index in range(EACH_KIND):
                    point = Path(top) / f"{kind}{index}"
                    point.mkdir()
                    mounted = subprocess.run(
                        ["mount", "-t", kind, kind, str(point)], capture_output=True, text=True
                    )
                    if mounted.returncode != 0:
                        skip_or_fail(f"cannot mount {kind}: {mounted.stderr.strip()}")
                    made.append((point, kind == "ramfs"))
            yield made
        finally:
            for point, _ in made:
                subprocess.run(["umount", "-l", str(point)], check=False)


# Run in a fresh interpreter, not a fork of this one, so that its table starts empty: a
# filesystem this process met and that was unmounted since may have left its device
# number to one of these.
HAMMER = """
import json, os, threading, time
import toil_threading
from toil_threading._locks import record_locked_elsewhere

wrong = []
rounds = [0]
stop = time.monotonic() + 2.0


def work(offset):
    mutex = f"thread{offset}"
    order = filesystems[offset:] + filesystems[:offset]
    while time.monotonic() < stop:
        for directory, needs_record in order:
            with toil_threading.global_mutex(directory, mutex):
                # Another open file description sees a write record lock exactly where
                # the lock flags ask for one.
                fd = os.open(os.path.join(directory, f"toil-mutex-{mutex}"), os.O_RDONLY)
                try:
                    seen = record_locked_elsewhere(fd)
                finally:
                    os.close(fd)
            if seen != needs_record:
                wrong.append(f"{directory}: record lock {seen}, wanted {needs_record}")
            rounds[0] += 1


threads = [threading.Thread(target=work, args=(i * 5,)) for i in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps([rounds[0], wrong]))
"""


def test_threads_on_more_filesystems_than_slots_lock_each_by_its_own_flags(
    core: str, filesystems: list[tuple[Path, bool]]
) -> None:
    assert len(filesystems) > LOCK_FLAGS_KEPT
    places = [(str(point), needs_record) for point, needs_record in filesystems]
    code = f"filesystems = {places!r}\n{HAMMER}"
    child = python_with_core(core, code, env=VERDICTS, stdout=subprocess.PIPE)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    rounds, wrong = json.loads(out)
    assert wrong == []
    assert rounds > 10 * len(filesystems)  # every filesystem was met many times
