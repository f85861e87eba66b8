"""Running Toil on this package: install_into_toil().

Toil's own module stays (its imports, its `time`, its `logger`, anything this package
does not have); each name it shares with this package is replaced by this package's.
If toil.lib.threading is already imported, that happens at once, and the copies other
modules took with `from toil.lib.threading import X` are replaced too; otherwise a finder
first on sys.meta_path does it as Toil's module is imported, before anyone can take a
copy.  The package's log records then go to the logger `toil.lib.threading`, which Toil's
logging configuration shows (it silences loggers outside `toil`), and one line at INFO
says, once per process, that the package serves Toil's module.
"""

from __future__ import annotations  # the annotations name what only type checkers import

import importlib.util
import logging
import sys
import threading

from . import _errors

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

TOIL_MODULE = "toil.lib.threading"
# Toil's attributes that stay Toil's although the package has a name like them.
KEPT = frozenset({"logger"})


def _package_objects() -> dict[str, object]:
    """The package's object for each name it may give Toil's module.  Loading them all
    here, before Toil's module runs, makes a broken installation fail before anything
    changes, never halfway through a patch."""
    import toil_threading

    return {name: getattr(toil_threading, name) for name in set(toil_threading.__all__) - KEPT}


def _patch(module: ModuleType, ours: dict[str, object]) -> dict[str, tuple[object, object]]:
    """Put the package's objects (ours) into Toil's module; {name: (Toil's, ours)} replaced."""
    import toil_threading

    if module.__dict__.get("__toil_threading__") is toil_threading:
        return {}
    replaced = {}
    for name in sorted(ours.keys() & module.__dict__.keys()):
        old, new = module.__dict__[name], ours[name]
        if old is not new:
            replaced[name] = (old, new)
            setattr(module, name, new)
    module.__dict__["__toil_threading__"] = toil_threading
    _errors.logger_name = TOIL_MODULE
    toils_own = sorted(
        name
        for name, value in module.__dict__.items()
        if not name.startswith("_") and name not in ours and not isinstance(value, type(sys))
    )
    _errors.log(
        10,
        "%s runs on toil_threading %s; Toil's own kept: %s",
        TOIL_MODULE,
        "(compiled core)" if toil_threading.ACCELERATED else "(pure-Python core)",
        ", ".join(toils_own) or "nothing",
    )
    _announce()
    return replaced


# Set once this process has said, or waits to say, that the package serves Toil's module.
_announced = False
_announcing = threading.Lock()


def _announce() -> None:
    """Say once per process, at INFO in Toil's log, which package serves Toil's module.

    Toil sets its logging up after importing the module (a leader as its workflow starts,
    a worker in its main), so a line that would not be shown yet waits: the record factory
    is watched until the first record made while INFO would be shown, and the line comes
    just before it.  (A handler waiting on the `toil` logger would be counted as one, and
    would silence Python's last-resort output of Toil's warnings before that.)"""
    global _announced
    with _announcing:
        if _announced:
            return
        _announced = True
    if _would_show():
        _say_served()
        return
    previous = logging.getLogRecordFactory()
    waiting = True

    def watching(*args: Any, **kwargs: Any) -> logging.LogRecord:
        nonlocal waiting
        if waiting and _would_show():
            with _announcing:
                now, waiting = waiting, False
            if now:
                if logging.getLogRecordFactory() is watching:  # else another wraps it
                    logging.setLogRecordFactory(previous)
                _say_served()
        return previous(*args, **kwargs)

    logging.setLogRecordFactory(watching)


def _would_show() -> bool:
    return logging.getLogger(TOIL_MODULE).isEnabledFor(logging.INFO)


def _say_served() -> None:
    import toil_threading

    _errors.log(
        20,
        "%s: served by toil-threading %s (%s core)",
        TOIL_MODULE,
        toil_threading.__version__,
        "compiled" if toil_threading.ACCELERATED else "pure-Python",
    )


class _PatchingLoader:
    """Toil's loader, followed by the patch: Toil's module runs as always first."""

    def __init__(self, loader: Any, ours: dict[str, object]) -> None:
        self._loader = loader
        self._ours = ours

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        module.__dict__.pop("__toil_threading__", None)  # importlib.reload() comes here too
        self._loader.exec_module(module)
        _patch(module, self._ours)

    def __getattr__(self, name: str) -> Any:  # get_source, get_code, is_package, ...
        return getattr(self._loader, name)


class _Finder:
    """First on sys.meta_path: finds toil.lib.threading with the finders after it, and
    hands it out with a loader that patches it (with the package's objects, loaded now)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != TOIL_MODULE:
            return None
        for finder in sys.meta_path:
            if isinstance(finder, _Finder) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and not isinstance(spec.loader, _PatchingLoader):
                    spec.loader = _PatchingLoader(  # type: ignore[assignment]
                        spec.loader, _package_objects()
                    )
                return spec
        return None


def install_into_toil() -> None:
    """Make Toil's toil.lib.threading run on this package, in this process.

    Works before or after Toil's module is imported; calling it again does nothing.
    Raises ModuleNotFoundError when Toil is not installed.
    """
    if importlib.util.find_spec("toil") is None:
        raise ModuleNotFoundError(
            "install_into_toil(): Toil is not installed here (no module named 'toil')",
            name="toil",
        )
    module = sys.modules.get(TOIL_MODULE)
    if module is None:
        if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
            sys.meta_path.insert(0, _Finder())
        return
    # Imported already: patch it now, and the copies other modules took of its names.
    # (Values Toil computed from them at import, like a class attribute holding
    # cpu_count(), keep what they got.)
    replaced = _patch(module, _package_objects())
    for other in list(sys.modules.values()):
        namespace = getattr(other, "__dict__", None)
        if other is module or not isinstance(namespace, dict):
            continue
        for name, (old, new) in replaced.items():
            if namespace.get(name) is old:
                namespace[name] = new


def spec_for_the_switch(
    fullname: str, path: Sequence[str] | None, target: ModuleType | None
) -> ModuleSpec | None:
    """For the start-up switch, asked for Toil's module as it is first imported: its spec,
    with the patching loader.  Whatever fails here fails before anything has changed, so
    the switch can fall back to Toil's own module."""
    spec = _Finder().find_spec(fullname, path, target)
    install_into_toil()  # its finder stays on sys.meta_path, for a reload
    return spec
