"""`toil-threading doctor`: is what this interpreter was asked for in force?

It looks at this very process: the core it runs on and why, the Toil switch (asked for
with TOIL_THREADING_FOR_TOIL, read by the start-up hook at the top of site-packages), the
retry policy and where each figure came from, and, given a directory, what the package
does there.  The command line runs in an interpreter started as any other, so the hook
has run in it, or not, exactly as it would in a Toil process started the same way.

Toil itself is not imported: its import pulls in docker and requests (a tenth of a second
on a warm disk, seconds on a cold shared one) and would make this process one the switch
serves.  Everything that import would decide is visible without it: where Toil's module
is, whether the switch's finder waits for it in this process, and whether the package's
objects that finder hands over all load.

The report (`doctor --json`), one object with these keys, each always present:

- ``version``: this package's version; ``python``: sys.executable.
- ``core``: ``in_use`` ("compiled" or "pure"), ``reason`` (why that one), ``problem``.
- ``switch``: ``variable`` (TOIL_THREADING_FOR_TOIL), ``value`` (null when unset),
  ``requested`` (a value that is not off), ``recognised`` (a value the installed hook
  accepts, on or off; null with no hook to read it), ``pth`` and ``module`` (the hook's
  two files, null where missing), ``installed`` (both there: the .pth in a site
  directory this interpreter reads, editable installs included), ``started`` (the hook
  switched this process on as it started), ``on`` (all of these), ``reason``,
  ``problem``.
- ``toil``: ``installed``, ``module`` (the file of Toil's toil.lib.threading, null
  without Toil), ``served`` (toil.lib.threading would be this package's), ``reason``,
  ``problem``.
- ``retry_policy``: ``max_tries``, ``backoff`` and ``max_backoff``, each with ``value``
  (in force), ``source`` ("default", the TOIL_THREADING_LOCK_* variable it came from, or
  "set in this process") and ``problem``.
- ``directory``: null without DIR; otherwise filesystem_report's keys (path, type,
  filesystem, mount_point, root, source, options, magic, flock, posix, strategy, reason)
  and ``across_machines``: "yes" (the locks taken there exclude across machines),
  "no" (only within this machine), "unknown", "local" (no other machine sees it) or
  "refused" (the package will not lock there); and ``problem``.
- ``problems``: every ``problem`` above that is not null, in that order: something asked
  for that is not in force (the exit status is then 1, else 0).

A ``problem`` is asked for and not in force: the switch requested but unrecognised, not
installed or not started; the pure core in use where the compiled one was expected (not
chosen with TOIL_THREADING_NO_EXTENSIONS, on CPython); the package's objects failing to
load under the switch; a retry setting not in force; a directory the package refuses.
"""

import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

import toil_threading

from . import _filesystems, _impl
from ._protocol import DEFAULT_RETRY_POLICY, RETRY_SETTINGS
from ._retry import setting

SWITCH = "TOIL_THREADING_FOR_TOIL"
NO_EXTENSIONS = "TOIL_THREADING_NO_EXTENSIONS"
# The start-up hook: a module at the top of site-packages, and the .pth that imports it.
HOOK = "toil_threading_for_toil"
HOOK_PTH = HOOK + ".pth"
RETRY_FIELDS = ("max_tries", "backoff", "max_backoff")


def diagnose(directory: str | None) -> dict[str, Any]:
    """The report described in the module's docstring; OSError for a directory that
    cannot be listed."""
    # Read before anything here imports the hook: what the interpreter's start left
    # (None there: the hook failed).
    hook_ran = HOOK in sys.modules
    switch = _switch(hook_ran, sys.modules.get(HOOK))
    core, toil, policy = _core(), _toil(switch["on"]), _retry_policy()
    found = None if directory is None else _directory(directory)
    sections = [core, switch, toil, *policy.values(), *([found] if found else [])]
    return {
        "version": toil_threading.__version__,
        "python": sys.executable,
        "core": core,
        "switch": switch,
        "toil": toil,
        "retry_policy": policy,
        "directory": found,
        "problems": [section["problem"] for section in sections if section["problem"]],
    }


def _core() -> dict[str, Any]:
    problem = None
    if _impl.accelerated():
        in_use, reason = "compiled", f"the compiled core imported ({_impl.core.__file__})"
    elif _impl.NO_EXTENSIONS:
        in_use, reason = "pure", f"{NO_EXTENSIONS} is set: the pure core, chosen knowingly"
    elif sys.implementation.name != "cpython":
        in_use = "pure"
        reason = f"{sys.implementation.name} is not CPython, the only one the compiled core is for"
    else:
        in_use = "pure"
        try:
            importlib.import_module("toil_threading._core_c")
        except ImportError as error:
            reason = _impl._why_not_compiled(error)
            problem = f"the pure core is in use, not the compiled one: {reason}"
        else:
            reason = "the compiled core imports, but this process was switched to the pure one"
    return {"in_use": in_use, "reason": reason, "problem": problem}


def _site_directories() -> list[str]:
    """The site directories this interpreter reads .pth files in, as site finds them."""
    import site

    found = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        found.append(site.getusersitepackages())
    return found


def _hook_module(hook_ran: bool, hook_at_start: ModuleType | None) -> tuple[Any, str]:
    """The start-up module (the one that ran at start, else the one an import finds), or
    None and why not."""
    if hook_ran:
        if hook_at_start is None:
            return None, f"{HOOK} failed as this interpreter started (its line is on stderr)"
        return hook_at_start, ""
    try:
        return importlib.import_module(HOOK), ""
    except Exception as failure:
        return None, f"{HOOK} does not import ({failure!r})"


def _switch(hook_ran: bool, hook_at_start: ModuleType | None) -> dict[str, Any]:
    value = os.environ.get(SWITCH)
    lowered = (value or "").lower()
    hook, hook_failure = _hook_module(hook_ran, hook_at_start)
    directories = _site_directories()
    pth = next(
        (path for path in (os.path.join(d, HOOK_PTH) for d in directories) if os.path.isfile(path)),
        None,
    )
    recognised: bool | None = None
    if hook is None:
        requested = bool(value)
    else:
        requested = lowered not in hook.OFF
        recognised = lowered in hook.ON or lowered in hook.OFF
    started = (
        hook_ran
        and getattr(hook, "switched_on", False) is True
        and any(type(finder).__module__ == HOOK for finder in sys.meta_path)
    )
    problem = None
    if not requested:
        reason = f"off: {SWITCH} is {'unset' if value is None else f'{value!a}'}"
    elif recognised is False:
        reason = "off: the value is not one the hook knows"
        problem = (
            f"{SWITCH}={value!a} is neither on ({', '.join(hook.ON)}) nor off"
            f" ({', '.join(hook.OFF[1:])} or empty), so the switch stays off"
        )
    elif sys.flags.no_site:
        reason = "off: requested, but no .pth file is read (python -S)"
        problem = f"{SWITCH} is set, but this interpreter runs with -S: no .pth file is read"
    elif pth is None:
        reason = "off: requested, but the hook is not installed"
        problem = (
            f"{SWITCH} is set, but no {HOOK_PTH} is in a site directory this interpreter"
            f" reads ({', '.join(directories) or 'none'}): reinstall toil-threading"
            " (pip install -e for a checkout)"
        )
    elif hook is None:
        reason = "off: requested, but the hook's module does not import"
        problem = f"{SWITCH} is set and {pth} is there, but {hook_failure}"
    elif not started:
        reason = "off: requested, but the hook did not start in this interpreter"
        problem = f"{SWITCH} is set, but {pth} did not switch this interpreter on as it started"
    else:
        reason = f"on: {SWITCH}={value!a}, and {HOOK} switched this interpreter on at start"
    return {
        "variable": SWITCH,
        "value": value,
        "requested": requested,
        "recognised": recognised,
        "pth": pth,
        "module": getattr(hook, "__file__", None),
        "installed": pth is not None and hook is not None,
        "started": started,
        "on": requested and problem is None,
        "reason": reason,
        "problem": problem,
    }


def _toil(switched_on: bool) -> dict[str, Any]:
    spec = importlib.util.find_spec("toil")  # a top-level name: found, not imported
    candidates = (
        os.path.join(location, "lib", "threading.py")
        for location in (spec and spec.submodule_search_locations) or ()
    )
    module = next(filter(os.path.isfile, candidates), None)
    problem = None
    if module is None:
        reason = "Toil (with its toil.lib.threading) is not installed for this interpreter"
    elif not switched_on:
        reason = f"toil.lib.threading ({module}) stays Toil's own: the switch is off"
    else:
        from . import _toil

        try:
            _toil._package_objects()
            reason = (
                f"toil.lib.threading ({module}) will be served by toil-threading"
                f" {toil_threading.__version__} as Toil imports it"
            )
        except Exception as failure:
            problem = f"the switch is on, but the package's objects for Toil fail ({failure!r})"
            reason = f"toil.lib.threading ({module}) stays Toil's own: {problem}"
    return {
        "installed": module is not None,
        "module": module,
        "served": module is not None and switched_on and problem is None,
        "reason": reason,
        "problem": problem,
    }


def _retry_policy() -> dict[str, dict[str, Any]]:
    found = {}
    policy = toil_threading.lock_retry_policy()
    for name, value, default, (variable, whole, largest) in zip(
        RETRY_FIELDS, policy, DEFAULT_RETRY_POLICY, RETRY_SETTINGS, strict=True
    ):
        source = "default" if value == default else "set in this process"
        problem = None
        try:
            given = setting(variable, whole, largest)
        except ValueError as refused:  # the default is used then (see _retry._refuse)
            problem = f"{refused}, so {value:g} is used"
        else:
            if given is not None and given == value:
                source = variable
            elif given is not None:
                problem = f"{variable}={os.environ[variable]!a} is not in force: {value:g} is"
        found[name] = {"value": value, "source": source, "problem": problem}
    return found


def _directory(path: str) -> dict[str, Any]:
    # A directory this user cannot list is an error (OSError naming it), as for inspect.
    os.close(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    report = toil_threading.filesystem_report(path)
    problem = None
    if report.strategy == _filesystems.STRATEGY_REFUSED:
        problem = str(_filesystems.refusal(path, report))
    return {
        **report.as_dict(),
        "across_machines": _filesystems.across_machines(report),
        "problem": problem,
    }


def rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """The report as (what, finding) rows for a table."""
    core, switch, directory = report["core"], report["switch"], report["directory"]
    found: list[tuple[str, ...]] = [
        ("core", f"{core['in_use']}: {core['reason']}"),
        ("switch", switch["reason"]),
        ("hook", switch["pth"] or f"no {HOOK_PTH} in a site directory read here"),
        ("toil", report["toil"]["reason"]),
    ]
    for name in RETRY_FIELDS:
        entry = report["retry_policy"][name]
        unit = "" if name == "max_tries" else " s"
        found.append((name, f"{entry['value']:g}{unit} ({entry['source']})"))
    if directory is not None:
        found += [
            ("directory", directory["path"]),
            ("filesystem", f"{directory['filesystem']} (mounted as {directory['type']})"),
            ("strategy", directory["strategy"]),
            ("across machines", _filesystems.ACROSS_MACHINES_WORDS[directory["across_machines"]]),
        ]
    found += [("problem", problem) for problem in report["problems"]]
    if not report["problems"]:
        found.append(("verdict", "everything asked for is in force"))
    return found
