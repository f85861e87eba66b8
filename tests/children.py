"""Children of the test process: forked (optionally as another user), with time limits.

A forked child can drop to another user for real, and one that hangs fails its test
instead of stalling the suite.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import importlib.util
import os
import pickle
import pkgutil
import select
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any

import pytest

import toil_threading

NOBODY = (65534, 65534)  # uid, gid: the unprivileged user every Linux system has


@functools.cache
def modules_the_package_may_import() -> tuple[str, ...]:
    """Every module of the installed package, and every other module it names in an import
    statement anywhere (some only inside a function, to keep the cold start short).

    Found once, in the test process, without importing any of them there."""
    found = set()
    for module in pkgutil.iter_modules(toil_threading.__path__, "toil_threading."):
        if module.name.endswith(".__main__"):  # importing it runs the command line
            continue
        found.add(module.name)
        spec = importlib.util.find_spec(module.name)
        source = spec.loader.get_source(module.name) if spec and spec.loader else None
        for node in ast.walk(ast.parse(source or "")):  # no source: the compiled core
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module)
    return tuple(sorted(found))


def to_import_before_becoming(user: tuple[int, int] | None) -> tuple[str, ...]:
    """What a child must import before it drops to user: another user may not be able to
    read this interpreter or the installed package (a home or a checkout only its owner
    may enter), so once it has dropped, the child can import nothing new."""
    return () if user is None else modules_the_package_may_import()


def become(user: tuple[int, int] | None, umask: int | None, imports: tuple[str, ...]) -> None:
    """In a forked child: import imports, set umask and drop to user (uid, gid)."""
    for module in imports:
        importlib.import_module(module)
    if umask is not None:
        os.umask(umask)
    if user is not None:
        os.setgroups([])
        os.setgid(user[1])
        os.setuid(user[0])


class Forked:
    """A forked child running body(child) as user, talking to the test in lines."""

    def __init__(
        self,
        body: Callable[[Forked], object],
        user: tuple[int, int] | None = None,
        umask: int | None = 0o022,
    ) -> None:
        to_child, self._to_child = os.pipe()
        self._from_child, from_child = os.pipe()
        imports = to_import_before_becoming(user)
        self.pid = os.fork()
        if self.pid == 0:
            status = 0
            try:
                os.close(self._to_child)
                os.close(self._from_child)
                self._to_child, self._from_child = from_child, to_child  # ours, from here
                become(user, umask, imports)
                body(self)
            except BaseException:
                traceback.print_exc()
                status = 1
            os._exit(status)
        os.close(to_child)
        os.close(from_child)

    def say(self, line: str) -> None:
        os.write(self._to_child, line.encode() + b"\n")

    def hear(self, timeout: float = 30.0) -> str:
        """The next line from the other side ("" at its end)."""
        line = b""
        while not line.endswith(b"\n"):
            ready, _, _ = select.select([self._from_child], [], [], timeout)
            if not ready:
                pytest.fail(f"no word from the other side in {timeout} s")
            chunk = os.read(self._from_child, 1)
            if not chunk:
                break
            line += chunk
        return line.decode().rstrip("\n")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.wait()

    def wait(self) -> int:
        try:
            return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        except ChildProcessError:
            return 0


def in_child(
    body: Callable[[], object],
    timeout: float = 30.0,
    user: tuple[int, int] | None = None,
    umask: int | None = None,
) -> Any:
    """Run body in a forked child and return what it returned.

    The child first sets umask and drops to user (uid, gid) where given.  An exception in
    the child fails the test with its traceback; so does a child still running after
    timeout seconds (it is killed) or one that dies without answering.
    """
    read_end, write_end = os.pipe()
    imports = to_import_before_becoming(user)
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = 0
        try:
            os.close(read_end)
            become(user, umask, imports)
            outcome: tuple[str, object] = ("returned", body())
        except BaseException as error:
            outcome = ("raised", f"{type(error).__name__}: {error}\n{traceback.format_exc()}")
        try:
            with os.fdopen(write_end, "wb") as pipe:
                pickle.dump(outcome, pipe)
        except BaseException:
            status = 1
        os._exit(status)
    os.close(write_end)
    data = b""
    deadline = time.monotonic() + timeout
    with os.fdopen(read_end, "rb") as pipe:
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([pipe], [], [], max(left, 0))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"the child was still running after {timeout} s: it hung")
            chunk = os.read(pipe.fileno(), 65536)
            if not chunk:
                break
            data += chunk
    os.waitpid(pid, 0)
    if not data:
        pytest.fail("the child died without answering")
    kind, value = pickle.loads(data)
    if kind == "raised":
        pytest.fail(f"the child raised:\n{value}")
    return value
