"""The toil-threading command line (also run as ``python -m toil_threading``).

It looks into a coordination directory, explains cpu_count(), and says what the package
does on a filesystem.  It goes through the facade, and through toil_threading._inspect
for what only an operator needs, so it sees the files exactly as the library does.

What it prints comes from disk and /proc, where anyone may have written anything: every
line of a table goes through escaped(), every report through _print_json(), and every
error through main's one path (a line on stderr, exit status 2).
"""

import argparse
import json
import math
import os
import sys

import toil_threading
from toil_threading import _checks
from toil_threading._escaping import SURROGATES, escape_one, escaped
from toil_threading._filesystems import STRATEGY_REFUSED
from toil_threading._inspect import (
    HELD_STATES,
    MEMBER_STATES,
    Inspection,
    LockFile,
    ToilPlace,
    inspect_directory,
    inspect_toil,
)

PROG = "toil-threading"
# Longest command line shown in the table (--wide and --json give it whole).
COMMAND_WIDTH = 60

# Exit statuses, as the epilog and the README list them.
OK = 0  # nothing held; a filesystem the package locks on; verify: safe
FOUND = 1  # something held; a filesystem the package refuses; verify: unsafe
ERROR = 2  # an error, or a usage error (as argparse exits)
NOT_JUDGED = 3  # verify: every lock held, but the holder shares this machine
INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports it
CLOSED_PIPE = 141  # stdout's reader went away: 128 + SIGPIPE, as a shell reports it


def _say(line: str) -> None:
    print(escaped(line))


def _print_table(rows: list[tuple[str, ...]], indent: str = "") -> None:
    """Print rows as columns aligned on their widest cell (the last column is not padded),
    each line after indent."""
    rows = [tuple(map(escaped, row)) for row in rows]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)] + [
            row[-1]
        ]
        print(indent + "  ".join(cells).rstrip())


def _jsonable(value: object) -> object:
    """value with every string valid Unicode (an undecodable byte as \\xNN, as the tables
    show it) and every float finite (JSON has no NaN: None stands for one)."""
    if isinstance(value, str):
        return SURROGATES.sub(escape_one, value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def _print_json(report: object) -> None:
    print(json.dumps(_jsonable(report), indent=2, allow_nan=False))


def _lock_file_row(kind: str, name: str, found: LockFile, wide: bool) -> tuple[str, ...]:
    pid = "" if found.pid is None else str(found.pid)
    if found.pid is None and found.state in HELD_STATES:
        pid = "?"  # held by a process /proc/locks does not show: another host or PID namespace
    # On one line (a `python -c` program has newlines in it), and unless wide, cut short.
    command = " ".join(" ".join(found.command).split()) if found.command else ""
    if len(command) > COMMAND_WIDTH and not wide:
        command = command[: COMMAND_WIDTH - 3] + "..."
    state = found.state
    if found.not_removed:
        state += f" (not removed: {found.not_removed})"
    return (kind, name, state, pid, command)


_HEADER = ("KIND", "NAME", "STATE", "PID", "COMMAND")


def _inspection_rows(found: Inspection, wide: bool) -> list[tuple[str, ...]]:
    rows = [_lock_file_row("mutex", mutex.name, mutex, wide) for mutex in found.mutexes]
    for arena in found.arenas:
        counts = [f"{arena.count(state)} {state}" for state in MEMBER_STATES if arena.count(state)]
        rows.append(("arena", arena.name, arena.state or ", ".join(counts) or "empty", "", ""))
        rows += [
            _lock_file_row("member", f"{arena.name}/{member.name}", member, wide)
            for member in arena.members
        ]
    rows += [_lock_file_row("name", name.name, name, wide) for name in found.names]
    return rows


def _print_inspection(found: Inspection, wide: bool) -> None:
    rows = _inspection_rows(found, wide)
    if not rows:
        _say(f"{found.directory}: no mutexes, arenas or process names")
        return
    _print_table([_HEADER, *rows])


def _print_toil(places: list[ToilPlace], wide: bool) -> None:
    """Each place, then each of its workflows (indented) with a table of its files."""
    nothing = "no mutexes, arenas, process names or deferred functions"
    for place in places:
        count = len(place.workflows)
        workflows = f"{count} Toil workflow{'' if count == 1 else 's'}" if count else ""
        _say(f"{place.path} ({place.source}): {place.state or workflows or 'no Toil workflow'}")
        for workflow in place.workflows:
            rows = _inspection_rows(workflow.coordination, wide)
            rows += [
                _lock_file_row("deferred", found.name, found, wide) for found in workflow.deferred
            ]
            if workflow.deferred_state:
                rows.append(("deferred", "deferred", workflow.deferred_state, "", ""))
            rows += _inspection_rows(workflow.cleanup, wide)
            _say(f"  {workflow.name}: {workflow.state or ('' if rows else nothing)}".rstrip())
            if rows:
                _print_table([_HEADER, *rows], indent="    ")


def _inspection_json(found: Inspection) -> dict[str, object]:
    return {
        "directory": found.directory,
        "held": found.held,
        "mutexes": [mutex.as_dict() for mutex in found.mutexes],
        "arenas": [
            {
                "name": arena.name,
                "mutex": arena.mutex,
                "state": arena.state or None,
                **{state.split(":")[0]: arena.count(state) for state in MEMBER_STATES},
                "members": [member.as_dict() for member in arena.members],
            }
            for arena in found.arenas
        ],
        "names": [name.as_dict() for name in found.names],
    }


def _toil_json(places: list[ToilPlace]) -> dict[str, object]:
    return {
        "held": any(place.held for place in places),
        "places": [
            {
                "path": place.path,
                "source": place.source,
                "state": place.state or None,
                "workflows": [
                    {
                        "name": workflow.name,
                        **_inspection_json(workflow.coordination),
                        "held": workflow.held,
                        "state": workflow.state or None,
                        "deferred": [found.as_dict() for found in workflow.deferred],
                        "deferred_state": workflow.deferred_state or None,
                        "cleanup": _inspection_json(workflow.cleanup),
                    }
                    for workflow in place.workflows
                ],
            }
            for place in places
        ],
    }


def _run_inspect(args: argparse.Namespace) -> int:
    if args.toil:
        if args.clean:
            args.parser.error("--clean does not go with --toil: Toil removes its own dead files")
        places = inspect_toil(args.directory, os.environ)
        if args.json:
            _print_json(_toil_json(places))
        else:
            _print_toil(places, args.wide)
        return FOUND if any(place.held for place in places) else OK
    if args.directory is None:
        args.parser.error("the following arguments are required: DIR")
    found = inspect_directory(args.directory, args.clean)
    if args.json:
        _print_json(_inspection_json(found))
    else:
        _print_inspection(found, args.wide)
    return FOUND if found.held else OK


def _run_cpus(args: argparse.Namespace) -> int:
    # What cpu_count() works out (and keeps), or what a captured system under --root says.
    answer = toil_threading.explain_cpu_count(args.root)
    decision = answer.decision
    if args.json:
        limits = [
            {
                "source": limit.source,
                "cpus": limit.cpus,
                "detail": limit.detail,
                "decided": limit is decision,
            }
            for limit in answer.limits
        ]
        report = {
            "cpus": answer.count,
            "decided_by": answer.decided_by,
            "sources": answer.sources,
            "limits": limits,
        }
        _print_json(report)
    elif args.explain:
        plural = "CPU" if answer.count == 1 else "CPUs"
        _say(f"cpu_count: {answer.count} {plural}, decided by {answer.decided_by or 'no source'}")
        rows: list[tuple[str, ...]] = [("SOURCE", "CPUS", "DETAIL")]
        for limit in answer.limits:
            star = "*" if limit is decision else ""  # the row that decided
            rows.append(
                (limit.source, "-" if limit.cpus is None else f"{limit.cpus}{star}", limit.detail)
            )
        _print_table(rows)
    else:
        print(answer.count)
    return OK


def _run_fs(args: argparse.Namespace) -> int:
    report = toil_threading.filesystem_report(args.path)
    if args.json:
        _print_json(report.as_dict())
    else:
        _print_table(
            [
                ("path", args.path),
                ("filesystem", f"{report.filesystem} (mounted as {report.type})"),
                ("mount point", str(report.mount_point)),
                ("options", report.options or "-"),
                ("statfs type", str(report.magic)),
                ("flock", report.flock),
                ("record locks", report.posix),
                ("strategy", report.strategy),
                ("why", report.reason),
            ]
        )
    return FOUND if report.strategy == STRATEGY_REFUSED else OK


def _run_verify(args: argparse.Namespace) -> int:
    from toil_threading import _verify

    if args.hold is not None:

        def say_held() -> None:
            print(
                escaped(
                    f"holding flock and a record lock on {args.directory}/{_verify.SCRATCH} for"
                    f" {args.hold:g} s; run `{PROG} verify {args.directory}` on another machine"
                    " now"
                ),
                file=sys.stderr,
                flush=True,
            )

        holder = _verify.hold(args.directory, args.hold, say_held)
        if args.json:
            _print_json({"held": holder})
        return OK
    found = _verify.check(args.directory)
    if args.json:
        _print_json(found)
    else:
        holder = found["holder"]
        words = {True: "excludes", False: "does not exclude", None: "not tried"}
        verdict = {True: "yes", False: "NO", None: "cannot tell on one machine"}
        _print_table(
            [
                ("holder", f"pid {holder['pid']} on {holder['host']}"),
                ("flock", f"{words[found['flock']]} across the two"),
                ("record locks", f"{words[found['posix']]} across the two"),
                ("strategy", found["strategy"]),
                ("safe", verdict[found["safe"]]),
            ]
        )
        if found["same_host"]:
            _say("(the holder runs on this machine: nothing was checked across machines)")
    return {True: OK, False: FOUND, None: NOT_JUDGED}[found["safe"]]


def _run_doctor(args: argparse.Namespace) -> int:
    from toil_threading import _doctor

    report = _doctor.diagnose(args.directory)
    if args.json:
        _print_json(report)
    else:
        _print_table(_doctor.rows(report))
    return FOUND if report["problems"] else OK


_DESCRIPTION = """\
Look at what toil_threading keeps on disk (mutexes, arenas, process names, and who
holds them), and at what it decides about this machine (CPUs, filesystems).
"""

_EPILOG = """\
examples:
  toil-threading inspect /dev/shm/coordination
  toil-threading inspect --json /dev/shm/coordination | jq '.mutexes[].pid'
  toil-threading inspect --clean /dev/shm/coordination   # remove the dead's files
  toil-threading inspect --toil --wide    # this node's Toil workflows, whole command lines
  # wait until nothing in the directory is held:
  while toil-threading inspect /dev/shm/coordination >/dev/null; [ $? = 1 ]; do sleep 5; done
  toil-threading cpus --explain
  toil-threading fs /dev/shm
  toil-threading verify /scratch/shared --hold 60    # on one node, then on another:
  toil-threading verify /scratch/shared
  TOIL_THREADING_FOR_TOIL=1 toil-threading doctor /scratch/shared

exit status:
  0    inspect: nothing held; cpus: answered; fs: the package locks there; verify: safe
       (verify --hold: held to the end); doctor: everything asked for is in force
  1    inspect: something held; fs: the package refuses to lock there; verify: unsafe;
       doctor: something asked for is not in force (each is a "problem" line)
  2    an error or a usage error (one line on stderr, under --json too); verify: no live
       holder, or something verify did not write at its scratch file's name (left alone)
  3    verify: every lock held, but the holder is on this machine: nothing was checked
       across machines
  130  interrupted (Ctrl-C)
  141  stdout's reader went away (a closed pipe: 128 + SIGPIPE): nothing more is said
"""


def _path(value: str) -> str:
    """A path argument, refused where the package's API refuses one (empty: "." is the
    working directory)."""
    try:
        return _checks.path(value, "the path")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


class _ShowVersion(argparse.Action):
    """--version: the installed version and the core in use.

    Looked up only when asked: importlib.metadata takes longer to import than the rest.
    """

    def __init__(self, option_strings: list[str], dest: str, help: str) -> None:
        super().__init__(option_strings, dest, nargs=0, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        from importlib.metadata import version

        core = "compiled" if toil_threading.ACCELERATED else "pure-Python"
        print(f"{PROG} {version('toil-threading')} ({core} core)")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action=_ShowVersion, help="print the version and the core in use, and exit"
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    inspect = commands.add_parser(
        "inspect",
        help="list the mutexes, arenas and process names in DIR, or of this node's Toil"
        " workflows, and who holds them (read-only unless --clean)",
        description="List every mutex file (held or free, with the holder's PID and command "
        "line when it runs on this host), every arena with its live and dead members, and "
        "every process name in DIR. Each file is probed with a non-blocking shared lock, let "
        "go at once, as the library itself does. Files this user may not open are shown as "
        "unknown. With --toil, find the Toil workflows of this node instead, wherever Toil "
        "9.6 puts their coordination directories (TOIL_COORDINATION_DIR_OVERRIDE, "
        "TOIL_COORDINATION_DIR, $XDG_RUNTIME_DIR/toil, /run/lock, the temporary directories, "
        "TOIL_WORKDIR_OVERRIDE, WORKDIR, TOIL_WORKDIR: every one that exists), and list the "
        "same of each, with its workers' deferred-function files and its cleanup arena; a "
        "directory that cannot be read is reported, not an error. Exit 1 if anything is "
        "held, 0 if not.",
    )
    inspect.add_argument(
        "directory",
        metavar="DIR",
        nargs="?",
        type=_path,
        help="the coordination directory (base_dir); with --toil, optional: Toil's work"
        " directory (its --workDir, or its --coordinationDir), looked in as well",
    )
    inspect.add_argument(
        "--toil",
        action="store_true",
        help="look at the coordination directories of this node's Toil workflows",
    )
    inspect.add_argument(
        "--clean",
        action="store_true",
        help="remove the files of dead arena members and dead process names: only empty files"
        " named as the package names them, never a mutex file or a file holding data; one it"
        " cannot remove is listed with the reason, and the others are still removed",
    )
    inspect.add_argument(
        "--json", action="store_true", help="print JSON instead of a table (commands whole)"
    )
    inspect.add_argument(
        "--wide",
        action="store_true",
        help=f"show whole command lines in the table (cut at {COMMAND_WIDTH} characters otherwise)",
    )
    inspect.set_defaults(run=_run_inspect, parser=inspect)

    cpus = commands.add_parser(
        "cpus",
        help="print what cpu_count() answers, and with --explain why",
        description="Print the number of whole CPUs this process may use, as cpu_count() works"
        " it out: PYTHON_CPU_COUNT or -X cpu_count where one is set, otherwise the smallest of"
        " the online CPUs, the affinity mask, the CPU quota of each cgroup level and a batch"
        " scheduler's allocation on this host (Slurm, PBS/Torque, Grid Engine, LSF, HTCondor).",
    )
    cpus.add_argument(
        "--explain",
        action="store_true",
        help="also list every source considered, the figure each gave and what it came from;"
        " the deciding one is starred",
    )
    cpus.add_argument(
        "--json",
        action="store_true",
        help="print JSON: the answer, the deciding source, each source's figure, every limit",
    )
    cpus.add_argument(
        "--root",
        default="/",
        metavar="DIR",
        type=_path,
        help="explain a system captured under DIR (its proc/self, proc/sys/kernel/hostname,"
        " sys/devices/system/cpu/online, cgroup mounts and scheduler files) instead of this"
        " process",
    )
    cpus.set_defaults(run=_run_cpus, parser=cpus)

    fs = commands.add_parser(
        "fs",
        help="name the filesystem under PATH and say what its locks do between machines",
        description="Name the filesystem under PATH (its mount, type and options), say whether"
        " flock and record locks exclude between machines there, and what the package does"
        " there. Exit 1 if the package refuses to lock there, 0 otherwise.",
    )
    fs.add_argument("path", metavar="PATH", type=_path)
    fs.add_argument("--json", action="store_true", help="print JSON")
    fs.set_defaults(run=_run_fs, parser=fs)

    verify = commands.add_parser(
        "verify",
        help="check on a real cluster whether each kind of lock excludes between machines",
        description="On one machine, `verify DIR --hold SECONDS` holds both kinds of lock on a"
        " scratch file in DIR; on another, `verify DIR` tries to take each and says whether"
        " the holder kept it out, and whether the package's strategy for DIR is safe there."
        " Exit 0 safe, 1 unsafe, 3 when every lock held but the holder runs on this machine"
        " (one machine's locks exclude between its processes whatever the filesystem does"
        " between machines: nothing was checked across machines), 2 when"
        " there is no live holder, when something verify did not write is at the scratch"
        " file's name (it is left alone), or on errors. Nothing is left behind.",
    )
    verify.add_argument(
        "directory", metavar="DIR", type=_path, help="a directory both machines share"
    )
    verify.add_argument(
        "--hold",
        type=float,
        metavar="SECONDS",
        help="hold the locks for this long (more than 0, at most 86400: a day), then exit 0",
    )
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(run=_run_verify, parser=verify)

    doctor = commands.add_parser(
        "doctor",
        help="say whether what this interpreter was asked for is in force: the core, the"
        " Toil switch, the retry policy, and what the package does in DIR",
        description="Say, for this interpreter: the core in use and why; whether the Toil"
        " switch is requested (TOIL_THREADING_FOR_TOIL), recognised, installed (its .pth in"
        " a site directory read here, editable installs included) and started, and whether"
        " toil.lib.threading would be this package's (Toil is found, not imported); the"
        " retry policy and where each figure came from; and, given DIR, its filesystem, the"
        " strategy there and whether its locks exclude across machines. Exit 0 when"
        " everything asked for is in force, 1 when something is not (each is a problem"
        " line), 2 on errors.",
    )
    doctor.add_argument(
        "directory",
        metavar="DIR",
        nargs="?",
        type=_path,
        help="a coordination directory to look at as well",
    )
    doctor.add_argument(
        "--json", action="store_true", help="print one JSON object (keys: toil_threading._doctor)"
    )
    doctor.set_defaults(run=_run_doctor, parser=doctor)
    return parser


def _let_stdout_go() -> None:
    """Where stdout cannot take what waits to be written (its reader gone, its disk full),
    point it at /dev/null, as Python's documentation advises for SIGPIPE: the
    interpreter's own flush at exit then has nothing to complain of."""
    try:
        if sys.stdout is not None:  # None: started with stdout closed, nothing is written
            sys.stdout.flush()
    except OSError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    args, extra = _parser().parse_known_args(argv)
    if extra:
        args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        status = int(args.run(args))
        if sys.stdout is not None:
            sys.stdout.flush()  # a closed pipe or a full disk shows here, not at exit
        return status
    except BrokenPipeError:  # stdout's (or stderr's) reader went away: nobody to tell
        _let_stdout_go()
        return CLOSED_PIPE
    except KeyboardInterrupt:
        return INTERRUPTED
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        message = f"{where}{error.strerror or error}"
    except (RuntimeError, ValueError) as error:
        message = str(error)
    _let_stdout_go()
    try:
        print(f"{PROG}: error: {escaped(message)}", file=sys.stderr)
    except OSError:
        pass  # stderr is gone too: the exit status says it
    return ERROR
