"""Installed at the top of site-packages, and read at every interpreter's start by
toil_threading_for_toil.pth when TOIL_THREADING_FOR_TOIL=1 (see the README, "Using it
with Toil"): toil.lib.threading then runs on toil_threading, if and when it is imported.

Until Toil's module is imported, nothing is imported and nothing happens.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType


class _WhenToilComes:
    """Waits on sys.meta_path for toil.lib.threading, then hands over to toil_threading."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != "toil.lib.threading":
            return None
        sys.meta_path.remove(self)
        try:
            from toil_threading import _toil
        except ImportError:  # the package was removed since this file was installed
            return None
        _toil.install_into_toil()
        return _toil._Finder().find_spec(fullname, path, target)


def watch() -> None:
    sys.meta_path.insert(0, _WhenToilComes())
