"""Choose the core: the compiled one where it can be imported, its pure-Python twin otherwise.

Every module of the package calls the core through `core` here, looked up at each call,
so `use_core` switches all of them (tests and benchmarks run both cores in one process).
Type checkers see the pure twin; stubtest holds the compiled core to its .pyi.
"""

import os
import sys

__all__ = ["accelerated", "choose_core", "core", "use_core"]

NO_EXTENSIONS = bool(os.environ.get("TOIL_THREADING_NO_EXTENSIONS"))

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

    from . import _core_py as core


def _why_not_compiled(error: ImportError) -> str:
    """Why the compiled core did not import, in words that say what to do."""
    package = os.path.dirname(os.path.abspath(__file__))
    checkout = os.path.dirname(package)
    if os.path.isdir(os.path.join(checkout, "csrc")) and os.path.exists(
        os.path.join(checkout, "setup.py")
    ):
        return (
            f"the toil_threading imported is the source folder {package}, which has no "
            "compiled core: it shadows the installed package because the current directory "
            "(or PYTHONPATH) puts the checkout first. Run from another directory, or with "
            "`python -I`"
        )
    return (
        f"the compiled core did not import ({error}); reinstall with a C compiler and the "
        "Python headers for speed, or set TOIL_THREADING_NO_EXTENSIONS=1 to choose the "
        "pure core knowingly"
    )


def choose_core() -> "ModuleType":
    if not NO_EXTENSIONS and sys.implementation.name == "cpython":
        try:
            from . import _core_c

            return _core_c
        except ImportError as error:
            import warnings

            warnings.warn(
                f"toil_threading is using its slower pure-Python core: {_why_not_compiled(error)}.",
                RuntimeWarning,
                stacklevel=2,
            )
    from . import _core_py

    return _core_py


if not TYPE_CHECKING:
    core = choose_core()


def use_core(module: "ModuleType") -> None:
    """Switch this process to the given core (tests, benchmarks)."""
    # Through globals(): to type checkers `core` is the pure twin's module itself.
    globals()["core"] = module


def accelerated() -> bool:
    """True while the compiled core is the one in use."""
    return core.__name__.endswith("._core_c")
