"""Choose the core: compiled where it can be, the pure-Python twin otherwise."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

NO_EXTENSIONS = bool(os.environ.get("TOIL_THREADING_NO_EXTENSIONS"))


def choose_core() -> ModuleType:
    if not NO_EXTENSIONS and sys.implementation.name == "cpython":
        try:
            from . import _core_c

            return _core_c
        except ImportError as error:
            import warnings

            warnings.warn(
                f"toil_threading is using its slower pure-Python core: the compiled core "
                f"did not import ({error}). Reinstall with a C compiler for speed, or set "
                f"TOIL_THREADING_NO_EXTENSIONS=1 to choose the pure core knowingly.",
                RuntimeWarning,
                stacklevel=2,
            )
    from . import _core_py

    return _core_py


core = choose_core()
