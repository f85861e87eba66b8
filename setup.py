"""Build the compiled core, or degrade loudly to the pure-Python twin.

TOIL_THREADING_NO_EXTENSIONS (any non-empty value) skips the extension; the package
reads the same variable at import.  Without Cython or without a C compiler the build
says which is missing and installs the pure twin, except under cibuildwheel
(CIBUILDWHEEL=1), where a wheel without its core is a bug.  Anything else that fails
(an error in the core's Cython or C sources, missing Python headers) fails the build:
it is a fault to see and fix, not a reason to ship the slower core.
"""

import os
import shutil
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

PURE = bool(os.environ.get("TOIL_THREADING_NO_EXTENSIONS"))
STRICT = os.environ.get("CIBUILDWHEEL") == "1"


def fall_back_to_pure(reason: str) -> None:
    """Warn that the compiled core is not built and why, or fail where it must be."""
    if STRICT:
        sys.exit(f"error: the compiled core of toil-threading cannot be built: {reason}")
    bar = "*" * 78
    sys.stderr.write(
        f"\n{bar}\n"
        f"WARNING: the compiled core of toil-threading is not built: {reason}.\n"
        "Installing the pure-Python core instead: it works, but it is slower.\n"
        "Install a C compiler and the Python headers, then reinstall, for speed.\n"
        f"{bar}\n\n"
    )


def missing_compiler(compiler: object) -> str | None:
    """Why the C compiler cannot be run (its program is not found), or None."""
    # compiler_so is the command line that compiles (CC and its flags where CC is set).
    command = getattr(compiler, "compiler_so", None)
    if command and shutil.which(command[0]) is None:
        return f"no C compiler: {command[0]!r} is not found (CC names the compiler)"
    return None


class BuildExtOrFallBack(build_ext):
    def build_extensions(self) -> None:
        reason = missing_compiler(self.compiler)
        if reason:
            fall_back_to_pure(reason)
        else:
            super().build_extensions()


class BuildPyWithStartup(build_py):
    """Also put the Toil switch at the top of site-packages: a .pth file (read by every
    interpreter at start) and the small module it imports when TOIL_THREADING_FOR_TOIL=1.
    Package data cannot go there, so they are copied beside the package.

    An editable install (PEP 660) runs this with editable_mode set and keeps nothing of
    build_lib: setuptools' editable_wheel builds the wheel from what it writes to the
    install command's install_lib, the unpacked wheel's root, where the scripts and data
    files go too (setuptools/command/editable_wheel.py: _configure_build, then
    _create_wheel_file's write_files).  The two files go there, as copies, so a change to
    them takes a reinstall.
    """

    STARTUP = ("toil_threading_for_toil.py", "toil_threading_for_toil.pth")

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            target = self.get_finalized_command("install").install_lib
        else:
            target = self.build_lib
        for name in self.STARTUP:
            self.copy_file(os.path.join("toil_threading", "_startup", name), target)


def extensions() -> list[Extension]:
    if PURE or sys.implementation.name != "cpython" or sys.platform == "win32":
        return []
    try:
        from Cython.Build import cythonize
    except ModuleNotFoundError as error:
        if error.name != "Cython":
            raise  # Cython is there but broken: that is to be fixed, not worked around
        fall_back_to_pure("Cython is not installed")
        return []
    return cythonize(
        [Extension("toil_threading._core_c", ["csrc/_core_c.pyx"], include_dirs=["csrc"])],
        compiler_directives={"language_level": "3"},
    )


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtOrFallBack, "build_py": BuildPyWithStartup},
)
