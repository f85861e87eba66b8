"""The Toil switch, installed at the top of site-packages beside toil_threading_for_toil.pth,
which runs start() as an interpreter starts with TOIL_THREADING_FOR_TOIL set (see the
README, "Using it with Toil"): switched on, toil.lib.threading then runs on
toil_threading, if and when it is imported.

Until Toil's module is imported, nothing is imported and nothing happens.  The switch never
stops a process: an unknown value, or a package that is missing or fails, is one line on
stderr, and Toil's own module is used unchanged.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

VARIABLE = "TOIL_THREADING_FOR_TOIL"
TOIL_MODULE = "toil.lib.threading"
# The values of VARIABLE, in any case; any other warns and leaves the switch off.
ON = ("1", "true", "yes", "on")
OFF = ("", "0", "false", "no", "off")

# True once start() has switched this process on.  The package reads it: under the
# switch, a bad setting of its own is reported and its default used, never raised.
switched_on = False


def warn(message: str) -> None:
    """Say message as one line on stderr: the switch's only voice (logging, when Toil sets
    it up at all, comes later)."""
    try:
        sys.stderr.write(f"toil-threading: {message}\n")
    except (AttributeError, OSError, ValueError):  # no stderr, or a closed one: stay quiet
        pass


class _WhenToilComes:
    """Waits on sys.meta_path for toil.lib.threading, then hands over to toil_threading."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != TOIL_MODULE:
            return None
        sys.meta_path.remove(self)
        try:
            from toil_threading import _toil

            return _toil.spec_for_the_switch(fullname, path, target)
        except Exception as failure:
            warn(f"{TOIL_MODULE} stays Toil's own: toil_threading failed ({failure!r})")
        # Toil's module, as the other finders give it (returning None would skip the
        # finder that moved into our place on sys.meta_path, in the middle of its search).
        import importlib.util

        return importlib.util.find_spec(fullname)


def start() -> None:
    """Read the switch and, if it is on, wait for Toil's module.  The .pth calls this once
    per process, however many times site reads it."""
    global switched_on
    value = os.environ.get(VARIABLE, "")
    if value.lower() in ON:
        switched_on = True
        sys.meta_path.insert(0, _WhenToilComes())
    elif value.lower() not in OFF:
        warn(
            f"{VARIABLE}={value!a} is neither on ({', '.join(ON)}) nor off"
            f" ({', '.join(OFF[1:])} or empty), so the switch stays off"
        )
