"""`nbp`: validate, plan, run, emulate, status, compare, export, review, gallery, server.

Exit codes: 0 success; 1 some cells failed (run) or a runtime error; 2 invalid spec or
configuration (nothing was submitted or written).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from nbp.flows.orchestration.run_options import (
    INPUT_OPTIONS,
    RUN_OPTIONS,
    add_flags,
    engine_options,
    flow_parameters,
    input_policy,
)
from nbp.flows.streams import guard_standard_streams

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    given = list(sys.argv[1:] if argv is None else argv)
    args = _parse(parser, given)
    args.command = ["nbp", *given]  # what a run's record says started it
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        print("nbp: interrupted", file=sys.stderr)
        code = 130
    except Exception as exc:
        told = expected_failure(exc, args)
        if told is None:
            raise
        line, hint = told
        print(f"nbp {args.subcommand}: {line}\nhint: {hint}", file=sys.stderr)
        code = EXIT_INVALID
    return code


def _parse(parser: argparse.ArgumentParser, given: list[str]) -> argparse.Namespace:
    """`parser.parse_args`, except that an argument the subcommand does not take is reported
    with that subcommand's usage (argparse reports it with the top level's); exit 2."""
    args, unknown = parser.parse_known_args(given)
    if unknown:
        commands = next(a for a in parser._actions
                        if isinstance(a, argparse._SubParsersAction))
        command: argparse.ArgumentParser = commands.choices[args.subcommand]
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def expected_failure(exc: Exception, args: argparse.Namespace) -> tuple[str, str] | None:
    """(what went wrong, a hint) for a failure that is the setting's or the input's, not
    nbp's: `main` prints the two lines and exits 2, with no traceback. None: a bug, which
    keeps its traceback. The one place that tells these apart."""
    from nbp.flows.orchestration.local_server import IDLE_TIMEOUT_ENV, ServerSettingInvalid
    from nbp.flows.orchestration.secrets import SecretBlockMissing
    from nbp.flows.orchestration.server import ApiUnreachable
    from nbp.outputs.sink import FilesystemMissing

    if isinstance(exc, ApiUnreachable):
        unset = ("prefect config unset PREFECT_API_URL" if "profile" in exc.source
                 else "unset PREFECT_API_URL")
        return str(exc), (f"start that server (prefect server start), or {unset}: nbp then "
                          "runs on a local server of its own")
    if isinstance(exc, ServerSettingInvalid):
        return str(exc), (f"unset {IDLE_TIMEOUT_ENV} (10 minutes), or give it seconds "
                          "(README: \"Prefect\")")
    if isinstance(exc, SecretBlockMissing):
        var, block = next(iter(exc.missing.items()))
        return str(exc), (f"export {var}, or create the block on this Prefect API: "
                          f"Secret(value=...).save({block!r}) (README: \"API keys as "
                          "Secret blocks\")")
    if isinstance(exc, FilesystemMissing):
        return str(exc), (f"pip install {exc.package}" if exc.package else
                          "install the package fsspec names") + " (in nbp's environment)"
    if args.subcommand in TARGET_READERS and _unreadable(exc):
        where = getattr(args, "target", None) or " or ".join(
            str(getattr(args, side)) for side in ("a", "b") if hasattr(args, side))
        return f"cannot read {where}: {_reason(exc)}", (
            "give the folder (or fsspec URL) a run wrote to; check that it is there, that "
            "you may read it and, for a remote store, its address and credentials")
    return None


# Commands that read a target they are given: an OSError from them is that target's.
TARGET_READERS = frozenset({"status", "compare", "export", "review", "plan"})


def _unreadable(exc: Exception) -> bool:
    """An error of reading a store: the OS's (local disks, fsspec's HTTP and FTP) or, on
    s3, botocore's own (no credentials, no endpoint), which s3fs passes on as they are."""
    botocore = sys.modules.get("botocore.exceptions")  # loaded only where s3 was used
    return isinstance(exc, OSError) or (
        botocore is not None and isinstance(exc, botocore.BotoCoreError))


def _reason(exc: Exception) -> str:
    """An OS error's words and file ("Not a directory: /x/manifest.parquet"), else its
    message."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc) or type(exc).__name__


class _Version(argparse.Action):
    """`--version`: printed on demand (asking git for the commit costs a process)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(version_line())
        parser.exit()


def version_line() -> str:
    """`nbp 0.1.0 (commit 1a2b…), prefect 3.8.8, Python 3.11.7`: the commit when nbp runs
    from a git checkout (`-dirty` when it has changes), as a run's record keeps it."""
    import platform
    from importlib import metadata

    from nbp.outputs.runs import source_commit

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "(not installed)"

    commit = source_commit()
    return (f"nbp {version('nbp')}" + (f" (commit {commit})" if commit else "")
            + f", prefect {version('prefect')}, Python {platform.python_version()}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbp", description=__doc__)
    parser.add_argument("--version", action=_Version,
                        help="print nbp's version (and commit, from a checkout) and exit")
    commands = parser.add_subparsers(required=True, metavar="COMMAND", dest="subcommand")

    validate = commands.add_parser("validate", help="check specs; every problem, with its line")
    validate.add_argument("specs", nargs="+", metavar="SPEC")
    validate.add_argument("--check-references", action="store_true",
                          help="also ask every distinct http(s) reference URL whether it "
                               "answers (HEAD, once each); exit 2 when one does not")
    add_flags(validate, INPUT_OPTIONS)
    validate.set_defaults(handler=cmd_validate)

    plan = commands.add_parser("plan", help="cells, estimated cost and duration")
    plan.add_argument("spec", metavar="SPEC")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("--offline", action="store_true",
                      help="do not read the spec's target: price every cell, as for an "
                           "empty target")
    plan.add_argument("--target", help="plan against this target instead of the spec's "
                                       "output.target")
    add_flags(plan, INPUT_OPTIONS)
    plan.set_defaults(handler=cmd_plan)

    run = commands.add_parser("run", help="run a spec as the Prefect flow nbp-run")
    run.add_argument("spec", metavar="SPEC", nargs="?")
    run.add_argument("--from", dest="from_run", metavar="TARGET[@RUN_ID]",
                     help="run again exactly the spec a run of TARGET recorded (the newest "
                          "run, or RUN_ID), into TARGET")
    run.add_argument("--spec-dir", metavar="DIR",
                     help="with --from: the folder the recorded spec's relative paths resolve "
                          "in (default: the current directory; never the record's)")
    run.add_argument("--live", action="store_true",
                     help="with --from: run a recorded emulated run against the real "
                          "providers (it pays); without it, an emulated run emulates again")
    add_flags(run, RUN_OPTIONS)
    run.set_defaults(handler=cmd_run)

    emulate = commands.add_parser("emulate", help="serve the provider emulators")
    emulate.add_argument("--port", type=int, default=8787)
    emulate.add_argument("--latency", type=float, default=1.0, help="seconds per task")
    emulate.set_defaults(handler=cmd_emulate)

    status = commands.add_parser("status", help="summarise a target's manifest")
    status.add_argument("target", metavar="TARGET")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cmd_status)

    compare = commands.add_parser("compare", help="two targets (or two runs) side by side")
    compare.add_argument("a", metavar="TARGET_A[@RUN_ID]",
                         help="a target (every row of its manifest), or the rows RUN_ID wrote")
    compare.add_argument("b", metavar="TARGET_B[@RUN_ID]", help="the same, for the other side")
    compare.add_argument("--out", default="compare.html", metavar="PATH",
                         help="write the page here: a path or fsspec URL (default compare.html)")
    compare.add_argument("--by", action="append", default=[], metavar="AXES",
                         help="pair cells on these axes (comma-separated or repeated): matrix "
                              "axes, include keys, dataset columns, template, provider, model, "
                              "replicate, aspect_ratio, resolution, account; default: by request")
    compare.add_argument("--json", action="store_true",
                         help="print the summary, the pairs and the tables as JSON")
    compare.set_defaults(handler=cmd_compare)

    export = commands.add_parser("export", help="a target's images as a table for a product "
                                                "database (CSV or Parquet)")
    export.add_argument("target", metavar="TARGET")
    export.add_argument("--format", choices=("csv", "parquet"),
                        help="csv (default; parquet when --out ends in .parquet) or parquet")
    export.add_argument("--url-prefix", metavar="URL",
                        help="image URLs are URL + each image's path in the target (an http(s) "
                             "URL or an fsspec URL of an allowed protocol); default: the "
                             "manifest's output_uri")
    export.add_argument("--out", metavar="PATH",
                        help="a path or fsspec URL, '-' for stdout (default: stdout for csv, "
                             "./export.parquet for parquet)")
    export.add_argument("--all", dest="include_all", action="store_true",
                        help="also rows a catalog should not publish: superseded and stale "
                             "cells (adds the superseded_by and stale columns)")
    export.set_defaults(handler=cmd_export)
    review = commands.add_parser("review", help="approve or reject a target's images, record "
                                                "their ratings; list them")
    review.add_argument("target", metavar="TARGET")
    review.add_argument("--approve", nargs="+", action="extend", default=[], metavar="CELL_ID",
                        help="approve these cells (ids, or unique prefixes as the gallery "
                             "shows them)")
    review.add_argument("--reject", nargs="+", action="extend", default=[], metavar="CELL_ID",
                        help="reject these cells (ids or unique prefixes)")
    review.add_argument("--note", metavar="TEXT", help="a note kept with these decisions")
    review.add_argument("--by", metavar="NAME", help="who decides (default: your user name)")
    review.add_argument("--import", dest="import_file", metavar="FILE",
                        help="record the decisions, or the ratings and preferences, of a file "
                             "the gallery's \"download decisions\" or \"download ratings\" "
                             "(or the compare page) saved")
    review.add_argument("--list", action="store_true",
                        help="print the target's decisions with their cells' paths")
    review.set_defaults(handler=cmd_review)

    gallery = commands.add_parser("gallery", help="redraw a target's index.html from its "
                                                  "manifest, in another pivot if you like")
    gallery.add_argument("target", metavar="TARGET")
    gallery.add_argument("--rows", type=_axes, metavar="AXES",
                         help="comma-separated axes of the grid's rows (e.g. style,template)")
    gallery.add_argument("--columns", type=_axes, metavar="AXES",
                         help="comma-separated axes of its columns (e.g. provider,model)")
    gallery.add_argument("--out", metavar="PATH",
                         help="write the page here (an .html path or fsspec URL in the "
                              "target's folder or a folder that holds it) instead of the "
                              "target's index.html")
    gallery.set_defaults(handler=cmd_gallery)

    server = commands.add_parser("server", help="nbp's own Prefect server, kept between runs "
                                                "(without PREFECT_API_URL): status, start, stop")
    actions = server.add_subparsers(required=True, metavar="ACTION", dest="action")
    server_status = actions.add_parser("status", help="where it runs, its idle timeout, "
                                                      "database and log; exit 1 when none runs")
    server_status.add_argument("--json", action="store_true")
    actions.add_parser("start", help="start it now (or find it) and say where")
    server_stop = actions.add_parser("stop", help="stop it (exit 1 while a run uses it)")
    server_stop.add_argument("--force", action="store_true",
                             help="stop it even while a run uses it (that run then fails)")
    server.set_defaults(handler=cmd_server)
    return parser


def _axes(text: str) -> list[str]:
    """`--rows a,b`: the axes named, in order."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r}: give axis names separated by commas")
    return names


def _policy_or_report(args: argparse.Namespace, command: str) -> Any:
    """The `InputPolicy` of the command's input flags, or None after saying what is wrong."""
    try:
        return input_policy(vars(args))
    except ValueError as exc:
        print(f"nbp {command}: {exc}", file=sys.stderr)
        return None


def cmd_validate(args: argparse.Namespace) -> int:
    from nbp.flows.spec.loader import check_job_file

    policy = _policy_or_report(args, "validate")
    if policy is None:
        return EXIT_INVALID
    worst = EXIT_OK
    for path in args.specs:
        job, problems = check_job_file(path, policy=policy)
        checked = None
        if job is not None and not problems and args.check_references:
            checked, problems = _check_references(job)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            worst = EXIT_INVALID
            print(f"{path}: {len(problems)} problem(s)", file=sys.stderr)
        else:
            print(f"{path}: valid" + ("" if checked is None else
                                      f"; {checked} reference URL(s) answered"))
        if job is not None:
            _print_notes(path, job)
    return worst


def _print_notes(path: str, job: Any, stream: Any = None) -> None:
    """What validation noticed without refusing: rows skipped or left out, duplicates dropped."""
    out = stream or sys.stdout
    if job.skipped is not None:
        print(f"{path}: {job.skipped.message}", file=out)
    for note in job.notes:
        print(note, file=out)


def _check_references(job: Any) -> tuple[int, list[Any]]:
    """(URLs checked, a located problem per URL that does not answer)."""
    from nbp.flows.engine.reference_check import check_job_references

    return asyncio.run(check_job_references(job))


def _load_or_report(path: str, policy: Any = None, *, keep_cells: bool = False) -> Any:
    """The `Job` at `path` (spec and cells), or None after printing every problem."""
    from nbp.flows.spec.loader import SpecInvalid, load_job

    try:
        return load_job(path, policy=policy, keep_cells=keep_cells)
    except SpecInvalid as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{path}: {len(exc.problems)} problem(s); nothing was submitted", file=sys.stderr)
        return None


def cmd_plan(args: argparse.Namespace) -> int:
    from nbp.flows.spec.delta import TargetDelta
    from nbp.flows.spec.plan import make_plan

    policy = _policy_or_report(args, "plan")
    job = None if policy is None else _load_or_report(args.spec, policy, keep_cells=True)
    if job is None:
        return EXIT_INVALID
    if args.offline:
        plan = make_plan(job.spec, job.cells)  # the cells validation expanded
    else:
        target = args.target or job.spec.output.target
        try:
            view = _target_view(job.spec, target)
        except (ValueError, OSError, ImportError) as exc:
            print(f"nbp plan: cannot read the target {target}: {exc} (--offline plans "
                  "without it)", file=sys.stderr)
            return EXIT_INVALID
        delta = TargetDelta(target)
        plan = make_plan(job.spec, job.cells, target=delta, priced=delta.priced(view))
        delta.finish(view)
    print(json.dumps(plan.to_json(), indent=2) if args.json else plan.render())
    _print_notes(args.spec, job, sys.stderr)  # on stderr: --json stays clean
    return EXIT_OK


def _target_view(spec: Any, target: str) -> Any:
    """What the target's manifest says, for planning against it (`flows.spec.delta`)."""
    from nbp.flows.spec.delta import TargetView
    from nbp.outputs.manifest import read_manifest
    from nbp.outputs.sink import Sink

    options = spec.output.storage_options if target == spec.output.target else {}
    manifest = read_manifest(Sink(target, options))
    if manifest is None:
        return TargetView(spec.name)
    rows = manifest.select("cell_id", "spec_cell_id", "job", "status", "output_path",
                           "superseded_by")
    return TargetView.of_rows(spec.name, rows.iter_rows(named=True))


def cmd_run(args: argparse.Namespace) -> int:
    if (args.spec is None) == (args.from_run is None):
        print("nbp run: give either SPEC or --from TARGET[@RUN_ID]", file=sys.stderr)
        return EXIT_INVALID
    if args.from_run is None:
        if args.live or args.spec_dir:
            print("nbp run: --live and --spec-dir go with --from", file=sys.stderr)
            return EXIT_INVALID
        return _run(args)
    if args.live and args.emulate:
        print("nbp run: --live and --emulate exclude each other", file=sys.stderr)
        return EXIT_INVALID
    try:
        recorded, target = _recorded_spec(args.from_run)
        args.spec = _spec_copy(recorded, args.spec_dir or os.getcwd())
    except (LookupError, OSError) as exc:
        print(f"nbp run: --from {args.from_run}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    args.target = args.target or target
    args.spec_source = f"{recorded.source} (from {target}@{recorded.run_id})"
    if recorded.emulated and not args.live and not args.emulate:
        args.emulate = True
        print(f"run {recorded.run_id} was emulated: emulating again (--live to run it "
              "against the real providers, which pays)", file=sys.stderr)
    try:
        return _run(args)
    finally:
        os.unlink(args.spec)


def _recorded_spec(source: str) -> tuple[Any, str]:
    """The spec a run of TARGET recorded (`outputs.runs.RecordedSpec`: text to validate like
    any spec, no folder to trust) and the target."""
    from nbp.outputs.runs import recorded_spec, split_run_ref
    from nbp.outputs.sink import Sink

    target, run_id = split_run_ref(source)
    recorded = recorded_spec(Sink(target), run_id)
    print(f"running again run {recorded.run_id} of {recorded.job} (spec sha256 "
          f"{recorded.sha256[:12]}, written {recorded.started_at})", file=sys.stderr)
    return recorded, target


def _spec_copy(recorded: Any, folder: str) -> str:
    """The recorded spec as a temporary file in `folder`, the folder the user named (its
    relative paths resolve there, and nothing is written anywhere else); removed after the
    run. `OSError` when it is not a folder."""
    if not os.path.isdir(folder):
        raise OSError(f"--spec-dir {folder}: not a folder")
    handle, path = tempfile.mkstemp(prefix=f".nbp-from-{recorded.run_id}-", suffix=".yaml",
                                    dir=folder)
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(recorded.text)
    return path


def _run(args: argparse.Namespace) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from nbp.flows.orchestration.server import ApiStart

    # Without PREFECT_API_URL, nbp's own server (kept between runs) is found, or started in
    # parallel with loading the spec and Prefect; a terminal's Ctrl-C never reaches it.
    api = ApiStart()
    try:
        return _run_spec(args, api)
    finally:
        api.close()


def _run_spec(args: argparse.Namespace, api: Any) -> int:
    policy = _policy_or_report(args, "run")
    job = None if policy is None else _load_or_report(args.spec, policy)
    if job is None:
        return EXIT_INVALID
    if args.target:
        from nbp.flows.spec.inputs import protocol_problem, split_protocol

        protocol = split_protocol(args.target)[0]
        problem = protocol_problem(protocol) if protocol else None
        if problem:
            print(f"nbp run: --target {args.target}: {problem}", file=sys.stderr)
            return EXIT_INVALID
    try:
        options = engine_options(vars(args))
    except ValueError as exc:  # RunConfigurationError: a shard that is not one
        print(f"nbp run: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if args.own_accounts and (problem := _own_accounts_problem(job.spec, options.shard, args)):
        print(f"nbp run: --own-accounts: {problem}", file=sys.stderr)
        return EXIT_INVALID
    if not args.emulate and (problem := _credentials_problem(job.spec, options)):
        print(f"nbp run: {problem}", file=sys.stderr)
        return EXIT_INVALID
    from_blocks = [] if args.emulate else _credentials_from_blocks(job.spec, options)
    from nbp.flows.orchestration.server import prefect_api

    # A reader that quits on Ctrl-C with nbp (`| tee`) must not end the run before its manifest.
    guard_standard_streams()
    from nbp.flows.display import TerminalDisplay

    display = TerminalDisplay(sys.stderr)  # first: it quiets Prefect's console on a terminal
    from prefect.exceptions import TerminationSignal

    from nbp.flows.engine.interrupt import Interrupt
    from nbp.flows.engine.policy import RunConfigurationError
    from nbp.flows.orchestration.flow import build_flow
    from nbp.flows.orchestration.secrets import check_secret_blocks

    interrupt = Interrupt()  # Ctrl-C and SIGTERM while the flow runs: stop, don't crash
    interrupt.listeners.append(display.stopping)
    nbp_run = build_flow(listeners=[display.update], interrupt=interrupt, job=job.spec.name)
    try:
        with prefect_api(started=api):
            if api.server is not None and api.server.started_here:
                print(_server_started_line(api.result()), file=sys.stderr)
            if from_blocks:  # SecretBlockMissing: one line, not a failed flow run
                asyncio.run(check_secret_blocks(job.spec, from_blocks))
            state: State[Any] = cast("State[Any]", asyncio.run(nbp_run(
                **flow_parameters(vars(args)), return_state=True)))
    except TerminationSignal:  # SIGTERM before the run started or after it ended
        print("nbp: stopped by SIGTERM", file=sys.stderr)
        return 143
    finally:
        display.close()
    result = state.result(raise_on_failure=False)
    if isinstance(result, RunConfigurationError):  # found before anything was sent
        print(f"nbp run: {result}", file=sys.stderr)
        return EXIT_INVALID
    if not isinstance(result, dict):
        why = f"{type(result).__name__}: {result}" if isinstance(result, BaseException) else (
            state.message or "")
        print(f"nbp run: the flow run ended {state.name}: {why}", file=sys.stderr)
        return EXIT_FAILED
    print(display.summary(result))
    return int(result["exit_code"])


def _server_started_line(record: Any) -> str:
    """What `nbp run` says when it started nbp's server (`record`: its `ServerRecord`)."""
    return (f"nbp: started a Prefect server for this and later runs: {record.url} "
            f"(stops after {_duration(record.idle_timeout_s)} without a run; "
            "`nbp server stop` stops it now)")


def _duration(seconds: float) -> str:
    """`10 min`, `90 s`, `2 h`."""
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def cmd_server(args: argparse.Namespace) -> int:
    """`nbp server status|start|stop`: nbp's kept Prefect server of this PREFECT_HOME."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from nbp.flows.orchestration.local_server import IDLE_TIMEOUT_ENV, LocalServer, ServerInUse

    server = LocalServer.of_settings()
    where = f"PREFECT_HOME={server.home}"
    if args.action == "stop":
        try:
            stopped = server.stop(force=args.force)
        except ServerInUse as exc:
            print(f"nbp server stop: {exc}\nhint: let the run end (or stop it), or "
                  "--force (the run then fails)", file=sys.stderr)
            return EXIT_FAILED
        print(f"stopped nbp's Prefect server at {stopped.url} (pid {stopped.pid})" if stopped
              else f"no nbp Prefect server was running ({where})")
        return EXIT_OK
    record = server.ensure() if args.action == "start" else server.running()
    if record is None:
        print(f"no nbp Prefect server runs ({where}); `nbp run` starts one when "
              "PREFECT_API_URL is not set")
        return EXIT_FAILED
    facts = {**vars(record), "url": record.url, "api_url": record.api_url,
             "database": server.database, "log": str(server.log_path)}
    if getattr(args, "json", False):
        print(json.dumps(facts, indent=2))
        return EXIT_OK
    print(f"nbp's Prefect server: {record.url}" + (" (its UI; the API at /api)" if record.ui
                                                   else " (the API at /api; no UI)"))
    print(f"  pid {record.pid}, started {record.started_at}, Prefect {record.prefect_version}")
    print(f"  stops after {_duration(record.idle_timeout_s)} without a run "
          f"({IDLE_TIMEOUT_ENV} when it started)")
    print(f"  database {facts['database']}\n  log {facts['log']}")
    if os.environ.get("PREFECT_API_URL"):
        print(f"note: PREFECT_API_URL is set ({os.environ['PREFECT_API_URL']}): `nbp run` "
              "uses that server, not this one")
    return EXIT_OK


def _credentials_problem(spec: Any, options: Any) -> str | None:
    """Missing API keys, found before Prefect starts: every variable the run's channels
    (`options`: the engine's `RunOptions`) need that the environment lacks, except those a
    Secret block provides (checked in the flow, which needs Prefect's API, before any
    create)."""
    from nbp.flows.engine.job import missing_message, run_channels
    from nbp.flows.spec.channels import missing_credentials

    missing = missing_credentials(run_channels(spec, options), os.environ)
    unblocked = {var: keys for var, keys in missing.items() if var not in spec.credentials}
    return missing_message(unblocked) if unblocked else None


def _credentials_from_blocks(spec: Any, options: Any) -> list[str]:
    """The variables the run's channels need that the environment lacks and the spec's
    Secret blocks are to provide."""
    from nbp.flows.engine.job import run_channels
    from nbp.flows.spec.channels import missing_credentials

    missing = missing_credentials(run_channels(spec, options), os.environ)
    return [var for var in missing if var in spec.credentials]


def _own_accounts_problem(spec: Any, shard: Any, args: argparse.Namespace) -> str | None:
    """Why --own-accounts cannot be used as given (`shard`: --shard's value), or None."""
    from nbp.flows.spec.channels import channels, split_for_shard

    if shard is None:
        return "needs --shard i/n (the shard that owns some of the accounts)"
    if args.shared_limits:
        return "shards that own their accounts share none: drop --shared-limits"
    found = channels(spec)
    if not split_for_shard(found, shard):
        return (f"shard {shard} would own none of the job's {len(found)} channel(s) "
                f"({', '.join(c.key for c in found)}): run at most {len(found)} shards")
    return None


def cmd_emulate(args: argparse.Namespace) -> int:
    from nbp.flows.orchestration.emulation import shell_exports
    from nbp.providers.emulator.hub import EmulatorHub

    hub = EmulatorHub(latency_s=args.latency)
    hub.serve_in_thread(port=args.port)
    print(f"nbp emulators serving on {hub.url} (Ctrl-C to stop). In the shell that runs "
          "nbp, paste these (test keys the emulators accept, not secrets), then "
          "`nbp run SPEC` without --emulate:", flush=True)
    for line in shell_exports(hub.environ()):
        print(line, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from nbp.outputs.manifest import read_manifest
    from nbp.outputs.runs import read_records, render_runs
    from nbp.outputs.sink import Sink
    from nbp.outputs.status import render_status, summarise

    try:
        frame = read_manifest(Sink(args.target))
    except ValueError as exc:  # ManifestInvalid: the target's file is input
        print(f"nbp status: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if frame is None:
        print(f"nbp status: no manifest.parquet at {args.target}", file=sys.stderr)
        return EXIT_INVALID
    summary = summarise(frame)
    records = read_records(Sink(args.target))
    if args.json:
        print(json.dumps({**summary.to_json(),
                          "run_records": [r.to_json() for r in records]}, indent=2))
    else:
        print(render_status(summary))
        if records:
            print(render_runs(records))
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from nbp.outputs.compare import (
        CompareInputError,
        compare,
        load_side,
        ratings,
        render_comparison,
    )
    from nbp.outputs.compare_axes import parse_axes
    from nbp.outputs.compare_page import write_page

    try:
        a, b = load_side(args.a), load_side(args.b)
        judged = ratings(a, b)
        comparison = compare(a, b, by=parse_axes(args.by), extra=[judged] if judged else [])
    except CompareInputError as exc:
        print(f"nbp compare: {exc}", file=sys.stderr)
        return EXIT_INVALID
    try:
        page = write_page(comparison, args.out)
    except CompareInputError as exc:
        print(f"nbp compare: --out {exc}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:
        print(f"nbp compare: could not write the page to {args.out}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps({**comparison.to_json(), "page": page}, indent=2, default=str))
    else:
        print(render_comparison(comparison))
        print(f"page: {page}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from nbp.flows.spec.inputs import HTTP_PROTOCOLS, InputPolicy
    from nbp.outputs.export import (
        DEFAULT_OUT,
        STDOUT,
        build_export,
        check_url_prefix,
        export_location,
        read_for_export,
        to_csv,
        to_parquet,
    )
    from nbp.outputs.sink import Sink

    fmt = args.format or ("parquet" if (args.out or "").lower().endswith(".parquet") else "csv")
    out = args.out or DEFAULT_OUT[fmt]
    protocols = (*HTTP_PROTOCOLS, *InputPolicy().allow_protocols)  # the inputs' own rule
    try:
        prefix = (None if args.url_prefix is None
                  else check_url_prefix(args.url_prefix, protocols=protocols))
        target = Sink(args.target)
        place = None if out == STDOUT else export_location(out, fmt, target=target)
        frame = read_for_export(target)
    except (ImportError, ValueError, OSError) as exc:  # ExportInputError, ManifestInvalid
        print(f"nbp export: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if frame is None:
        print(f"nbp export: no manifest.parquet at {args.target}", file=sys.stderr)
        return EXIT_INVALID
    export = build_export(frame, url_prefix=prefix, include_all=args.include_all)
    for note in export.notes():
        print(f"nbp export: {note}", file=sys.stderr)
    data = to_csv(export.table) if fmt == "csv" else to_parquet(export.table)
    if place is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return EXIT_OK
    sink, name = place
    try:
        written = sink.write_bytes(name, data, overwrite=True)
    except OSError as exc:
        print(f"nbp export: could not write the export to {out}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"export: {written} ({export.table.height} rows, {fmt})")
    return EXIT_OK


def cmd_review(args: argparse.Namespace) -> int:
    """Record decisions (`outputs.review`) and set the manifest's `review` column from the
    store, under the target's manifest lease (a run ending meanwhile merges into it)."""
    import uuid

    from nbp.flows.engine.lease import Heartbeat, Lease, LeaseTimeout
    from nbp.outputs import review
    from nbp.outputs.layout import MANIFEST_LOCK
    from nbp.outputs.manifest import ManifestInvalid, read_manifest, write_manifest
    from nbp.outputs.sink import Sink

    if not (args.approve or args.reject or args.import_file or args.list):
        print("nbp review: nothing to do: give --approve, --reject, --import or --list",
              file=sys.stderr)
        return EXIT_INVALID
    try:
        sink = Sink(args.target)
        manifest = read_manifest(sink)
        if manifest is None:
            raise ValueError(f"no manifest.parquet at {args.target}")
        by = review.default_reviewer() if args.by is None else args.by
        review.check_signature(by, args.note)
        imported = review.Imported()
        if args.import_file:
            with open(args.import_file, "rb") as handle:
                data = handle.read(review.MAX_EXPORT_BYTES + 1)
            try:
                imported = review.read_import(data, manifest, sink)
            except review.ReviewInputError as exc:
                raise review.ReviewInputError(f"--import {args.import_file}: {exc}") from None
        choices = review.gather(manifest, approve=args.approve, reject=args.reject,
                                also=imported.choices)
    except (ImportError, ValueError, OSError) as exc:  # ManifestInvalid, ReviewInputError
        print(f"nbp review: {exc}", file=sys.stderr)
        return EXIT_INVALID
    judged, rated = imported.judged, {}

    def apply() -> tuple[dict[str, review.Decision], Any]:
        store = review.decisions(sink)
        store.update(review.record_all(sink, choices, by=by, note=args.note, previous=store))
        if judged is not None:
            rated.update(review.record_ratings(sink, judged, by=by, previous=store))
            store.update(rated)
        current = read_manifest(sink)  # under the lease: as the last run left it
        if current is not None and choices:
            current = review.with_reviews(current, review.frame_of(store))
            write_manifest(sink, current)
        return store, current

    async def locked() -> tuple[dict[str, review.Decision], Any]:
        heartbeat = Heartbeat(sink, f"review-{uuid.uuid4().hex[:16]}")
        async with heartbeat, Lease(sink, MANIFEST_LOCK, heartbeat):
            return await asyncio.to_thread(apply)

    store = None
    if choices or judged is not None:
        try:
            store, manifest = asyncio.run(locked())
        except ManifestInvalid as exc:
            print(f"nbp review: {exc}", file=sys.stderr)
            return EXIT_INVALID
        except (LeaseTimeout, OSError) as exc:
            print(f"nbp review: not all recorded; run it again: {exc}", file=sys.stderr)
            return EXIT_FAILED
        if choices:
            print(review.summary(choices, manifest) + " (`nbp gallery TARGET` redraws "
                  "index.html with them)")
        if judged is not None:
            print(review.ratings_summary(judged, rated) + " (`nbp review TARGET --list` shows "
                  "them)")
    if args.list:
        print(review.render_list(review.decisions(sink) if store is None else store, manifest))
    return EXIT_OK


def cmd_gallery(args: argparse.Namespace) -> int:
    """Redraw the target's gallery from its manifest (`outputs.gallery`): the pivot given,
    else the one the newest run's spec asked for. The target's own index.html is written
    under its manifest lease (a run ending meanwhile writes its page after this one)."""
    import uuid

    from nbp.flows.engine.lease import Heartbeat, Lease, LeaseTimeout
    from nbp.outputs import gallery
    from nbp.outputs.layout import MANIFEST_LOCK
    from nbp.outputs.manifest import read_manifest
    from nbp.outputs.sink import Sink

    try:
        sink = Sink(args.target)
        manifest = read_manifest(sink)
        if manifest is None:
            raise ValueError(f"no manifest.parquet at {args.target}")
        axes = gallery.axes_of(manifest)
        rows, columns = args.rows, args.columns
        if rows is None and columns is None:
            rows, columns = _recorded_pivot(sink, axes)
        gallery.check_pivot(rows, columns, axes)
        page, name, base = gallery.page_place(sink, args.out, manifest)
    except (ImportError, ValueError, OSError) as exc:  # ManifestInvalid, GalleryInputError
        print(f"nbp gallery: {exc}", file=sys.stderr)
        return EXIT_INVALID

    def draw() -> str:
        current = read_manifest(sink) if args.out is None else manifest
        return gallery.write_gallery(
            page, manifest if current is None else current, rows=rows, columns=columns,
            title=gallery.title_of(manifest, args.target), name=name, base=base)

    async def locked() -> str:
        heartbeat = Heartbeat(sink, f"gallery-{uuid.uuid4().hex[:16]}")
        async with heartbeat, Lease(sink, MANIFEST_LOCK, heartbeat):
            return await asyncio.to_thread(draw)

    try:
        uri = draw() if args.out is not None else asyncio.run(locked())
    except (LeaseTimeout, OSError, ValueError) as exc:
        print(f"nbp gallery: could not write the page: {exc}", file=sys.stderr)
        return EXIT_FAILED
    layout = gallery.Layout.of(rows, columns)
    shown = ("the default layout (prompt rows by aspect ratio and resolution, a section per "
             "dataset row)" if layout.by_dataset_row else
             f"rows {', '.join(layout.rows)}; columns {', '.join(layout.columns)}")
    print(f"gallery: {uri} ({shown})")
    return EXIT_OK


def _recorded_pivot(sink: Any, axes: Sequence[str]) -> tuple[Any, Any]:
    """The `output.gallery` pivot of the spec the target's newest run recorded, as (rows,
    columns): (None, None) when there is none, or when it names an axis the manifest lacks
    (said on stderr). The record is input: its spec is parsed with the spec loader's bounds
    and only that key is read."""
    from nbp.flows.spec.yamlpos import YamlSyntaxError, load
    from nbp.outputs.gallery import GalleryInputError, check_pivot
    from nbp.outputs.runs import find_record

    try:
        text = find_record(sink).spec_text
        spec = load(text).value
    except (LookupError, YamlSyntaxError):
        return None, None
    output = spec.get("output") if isinstance(spec, dict) else None
    pivot = output.get("gallery") if isinstance(output, dict) else None
    if not isinstance(pivot, dict):
        return None, None
    sides = []
    for side in ("rows", "columns"):
        names = pivot.get(side)
        sides.append([n for n in names if isinstance(n, str)] or None
                     if isinstance(names, list) else None)
    rows, columns = sides
    try:
        check_pivot(rows, columns, axes)
    except GalleryInputError as exc:
        print(f"nbp gallery: the newest run's output.gallery does not fit this manifest "
              f"({exc}); drawing the default layout", file=sys.stderr)
        return None, None
    return rows, columns


if __name__ == "__main__":
    raise SystemExit(main())
