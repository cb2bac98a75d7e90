"""The ``cl-harness`` command: run | validate | strategies | compare | ui."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

EXIT_OK, EXIT_FAILED_RUNS, EXIT_CONFIG, EXIT_TRACKING, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _quiet_libraries(verbose: bool) -> None:
    """Silence third-party chatter (not errors): warnings, and unless ``verbose`` the libraries' log lines and progress
    bars. Set through the environment where a library reads it, so worker processes inherit it."""
    warnings.filterwarnings("ignore", message="no QP solver")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if verbose:
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # "Creating initial MLflow database tables", alembic's INFO
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # any other library's tqdm bar (transformers' GGUF loader); ours say disable=
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _number(kind: type, low: float, high: float, above: bool = False):
    """An argparse type: a finite ``kind`` (int or float) from ``low`` (or above it) to ``high``, else one message."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not (low < value if above else low <= value) or not value <= high:  # NaN fails both
            raise argparse.ArgumentTypeError(f"must be {'more than' if above else 'from'} {low} {'and at most' if above else 'to'} "
                                             f"{high}, got {text}")
        return value
    return parse


def _given(text: str) -> str:
    """An argparse type for a path, name or address: refused when empty (``--out=`` would silently mean the default)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give a value or leave the flag out")
    return text


def _add_config_args(parser: argparse.ArgumentParser, what: str = "experiment YAML file") -> None:
    parser.add_argument("experiment", type=_given, help=what)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config value, e.g. --set training.epochs=1 (repeatable)")
    parser.add_argument("--data-root", type=_given, help="directory that ${DATA_ROOT} in stream files points to")


def _add_execution_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("execution")
    group.add_argument("--executor", choices=["local", "ray"], default="local",
                       help="local: runs in this process, or in --workers processes; ray: one Ray task per run (needs cl-harness[ray])")
    group.add_argument("--workers", type=_number(int, 1, 1024), default=1, metavar="N", help="local executor: N runs (and N search trials) at once in N processes (default 1)")
    group.add_argument("--ray-address", type=_given, metavar="ADDR",
                       help="Ray cluster to submit to, e.g. ray://head:10001 or auto (default: start a local one)")
    group.add_argument("--max-retries", type=_number(int, 0, 100), metavar="N",
                       help="times a run whose worker process died is started again from its checkpoint (default 2)")
    group.add_argument("--cpus-per-run", type=_number(float, 0, 1024, above=True), metavar="N",
                       help="CPUs each run asks Ray for (default 1); also its torch threads (local default: CPUs / workers)")
    group.add_argument("--gpus-per-run", type=_number(float, 0, 64), default=0.0, metavar="N", help="GPUs each run asks Ray for (default 0)")


def _version() -> str:
    """The installed distribution's version, or the package's own when run from a checkout."""
    from importlib import metadata

    from cl_harness import __version__

    try:
        return metadata.version("cl-harness")
    except metadata.PackageNotFoundError:
        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cl-harness", description="Continual-learning experiments on pretrained transformers.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--verbose", action="store_true",
                        help="show the log lines and progress bars of the libraries (MLflow, Optuna, Hugging Face)")
    parser.add_argument("--version", action="version", version=f"cl-harness {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train every strategy and seed of an experiment, tracked in MLflow")
    _add_config_args(run)
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlruns/mlflow.db or $MLFLOW_TRACKING_URI)")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.add_argument("--dry-run", action="store_true", help="print the planned runs and exit")
    run.add_argument("--no-prefix-sharing", action="store_true",
                     help="train task 1 in every run, instead of once per seed and order for the strategies that train it as naive does "
                          "(same results; sets prefix_sharing: false)")
    resume = run.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue an interrupted grid (the default when its run folder exists)")
    resume.add_argument("--restart", action="store_true", help="start the grid over; the old run folder is renamed, not deleted")
    search = run.add_mutually_exclusive_group()
    search.add_argument("--search-only", action="store_true", help="run the experiment's `search:` block and stop (resumes a killed search)")
    search.add_argument("--skip-search", action="store_true", help="do not search; the final runs use best_params.yaml if a search left one")
    _add_execution_args(run)

    validate = sub.add_parser("validate", help="check config, stream, data, backbone and strategies without training")
    _add_config_args(validate, "experiment or stream YAML file")

    strategies = sub.add_parser("strategies", help="list the registered strategies and their parameters")
    strategies.add_argument("--all", action="store_true", help="also list Avalanche strategies that cannot work here")

    search_report = sub.add_parser("search-report", help="best trials, parameter importances and optimisation history of a search")
    search_report.add_argument("experiment", type=_given, help="MLflow experiment name (the experiment YAML's `name`)")
    search_report.add_argument("--out", type=_given, help="folder for the plots (default: reports/<experiment>/search)")
    search_report.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlruns/mlflow.db or $MLFLOW_TRACKING_URI)")

    compare = sub.add_parser("compare", help="comparison table and report.html for an experiment, read from MLflow")
    compare.add_argument("experiment", type=_given, help="MLflow experiment name (the experiment YAML's `name`)")
    compare.add_argument("--parent", type=_given, help="parent run id (default: the most recent invocation)")
    compare.add_argument("--out", type=_given, help="folder for report.html, CSV and plots "
                                       "(default: reports/<experiment>/<first 8 characters of the parent run id>)")
    compare.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlruns/mlflow.db or $MLFLOW_TRACKING_URI)")
    compare.add_argument("--markdown", action="store_true", help="print every column as a Markdown table instead of the terminal table")

    ui = sub.add_parser("ui", help="serve the MLflow UI on the tracking store; prints its address once it answers")
    ui.add_argument("--tracking-uri", help="store to browse (default: sqlite:///mlruns/mlflow.db or $MLFLOW_TRACKING_URI)")
    ui.add_argument("--host", type=_given, default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=_number(int, 0, 65535), default=5000, help="port to listen on (default 5000); a busy port is refused")
    ui.add_argument("--workers", type=_number(int, 1, 256), default=1, metavar="N", help="server worker processes (default 1)")
    ui.add_argument("--timeout", type=_number(float, 0, 86400, above=True), default=120.0, metavar="S",
                    help="seconds to wait for the server to answer before giving up (default 120)")
    return parser


def cmd_validate(args) -> int:
    from cl_harness.config.loader import is_stream_file, load_experiment
    from cl_harness.grid.input_checks import check_tracking_uri
    from cl_harness.grid.prepare import check_experiment
    from cl_harness.report.glance import count

    if is_stream_file(args.experiment):
        return validate_stream(args)
    checked = check_experiment(load_experiment(args.experiment, args.overrides, args.data_root))
    check_tracking_uri(checked.loaded, None)
    search = None
    if checked.config.search is not None:
        from cl_harness.search.cli_hooks import check_search, describe_search

        search = check_search(checked)
    config = checked.config
    print(f"experiment {config.name!r}: OK")
    print(f"  stream   {checked.stream_name!r} ({checked.scenario}), {len(checked.tasks)} tasks")
    width = max(len(task.name) for task in checked.tasks)
    for task in checked.tasks:
        labelled = checked.kinds.get(task.kind).labelled
        kind = f"{len(task.label_names)} classes" if labelled else f"{task.kind:<9}"
        names = f"  {', '.join(map(str, task.label_names))}" if labelled else ""
        valid = f"  valid {len(task.valid_labels):>6}" if task.valid_labels else ""
        print(f"    {task.name:<{width}}  {kind}  train {len(task.train_labels):>6}  test {len(task.test_labels):>6}{valid}{names}")
    peft = config.backbone.peft
    print(f"  backbone {config.backbone.name} ({config.backbone.kind}" + (f", peft: {peft.method})" if peft.method != "none" else ")"))
    print(f"  strategies {', '.join(s.label for s in checked.strategies)}; seeds {config.seeds}; {count(len(checked.runs), 'run')}")
    if search is not None:
        print("  " + "\n  ".join(describe_search(search)))
    return EXIT_OK


def validate_stream(args) -> int:
    """``validate STREAM.yaml``: the schema, then every task read and cut; offline, hub tasks are named, not failed."""
    from cl_harness.grid.prepare import check_stream

    if args.overrides:
        from cl_harness.errors import ConfigError

        raise ConfigError(f"applies to experiment files; {args.experiment} is a stream", key="--set",
                          hint="drop --set, or validate an experiment that uses this stream")
    checked = check_stream(args.experiment, args.data_root)
    config = checked.loaded.config
    missing = sum(data is None for data in checked.tasks)
    status = "OK" if not missing else f"schema OK; {missing} hub task(s) not read"
    print(f"stream {config.name!r} ({config.scenario}), {len(config.tasks)} tasks: {status}")
    width = max(len(task.name) for task in config.tasks)
    for task, data in zip(config.tasks, checked.tasks):
        if data is None:
            print(f"  {task.name:<{width}}  hub dataset {task.source.name!r}: not read (hub unreachable)")
        else:
            print(f"  {task.name:<{width}}  {len(data.label_names)} classes  train {len(data.train_labels):>6}  "
                  f"test {len(data.test_labels):>6}  {', '.join(map(str, data.label_names))}")
    if checked.unreachable is None:
        print(f"  output units: {sum(checked.space.head_sizes)} in {len(checked.space.head_sizes)} head(s)")
    else:
        print(f"\nnote: {checked.unreachable}")
        twin = Path(args.experiment).resolve().parent.parent / "local" / Path(args.experiment).name
        if twin.is_file():
            print(f"  offline twin of this stream: {twin} (cl-harness validate {twin} --data-root DIR)")
    return EXIT_OK


def cmd_run(args) -> int:
    from cl_harness.config.loader import load_experiment
    from cl_harness.errors import ConfigError
    from cl_harness.grid.executors import ExecutionOptions, make_executor
    from cl_harness.grid.experiment import grid_status, run_experiment
    from cl_harness.grid.plan import share_pending_prefixes
    from cl_harness.grid.prepare import check_experiment, prepare_experiment
    from cl_harness.report.glance import count
    from cl_harness.report.terminal import run_summary
    from cl_harness.grid.input_checks import check_tracking_uri, tracking_uri_source
    from cl_harness.tracking.store_guard import probe_store

    options = ExecutionOptions(args.executor, args.workers, args.ray_address, args.max_retries, args.cpus_per_run, args.gpus_per_run)
    overrides = [*args.overrides, "prefix_sharing=false"] if args.no_prefix_sharing else args.overrides
    checked = check_experiment(load_experiment(args.experiment, overrides, args.data_root))
    check_tracking_uri(checked.loaded, args.tracking_uri)
    if checked.config.search is None and (args.search_only or args.skip_search):
        raise ConfigError(f"applies to an experiment with a `search:` block; {args.experiment} has none",
                          key="--search-only" if args.search_only else "--skip-search", hint="add a search: block, or drop the flag")
    search = None
    if checked.config.search is not None:
        from cl_harness.search.cli_hooks import check_search

        search = check_search(checked)
    uri, source = tracking_uri_source(checked.loaded, args.tracking_uri)
    executor = make_executor(options, uri)
    status = grid_status(checked)
    if status.note:
        print(f"note: {status.note}", file=sys.stderr)
    if args.dry_run:
        searching: set[str] = set()  # strategies whose values the search is still to pick
        if search is not None:
            from cl_harness.search.cli_hooks import describe_search, planned_after_search

            print("\n".join(describe_search(search, args.skip_search, args.search_only)))
            checked, searching = planned_after_search(checked, search, args.skip_search)
            status = grid_status(checked)
        done = {p.name for p in checked.runs if p.name in status.done and p.strategy.label not in searching}
        runs = share_pending_prefixes(checked.runs, done)
        print(f"{count(len(runs), 'planned run')} of experiment {checked.name!r}, {len(done)} already done "
              f"(comparison folder {status.folder}):")
        for planned in runs:
            shared = f"  (task 1 from {planned.prefix.name})" if planned.prefix else ""
            state = "done" if planned.name in done else "after search" if planned.strategy.label in searching else "to train"
            print(f"  {state:<{12 if searching else 8}}  {planned.name:<40} order: {' -> '.join(checked.task_names[i] for i in planned.order)}{shared}")
        if searching:
            print("  (after search: trained with the values the search picks, or found done if they match a finished run)")
        print_prefix_units(runs)
        return EXIT_OK
    probe_store(uri, source)  # before tokenising: fail fast, naming the flag or key the URI came from
    prepared = prepare_experiment(checked)
    if prepared.cache is not None and prepared.cache.hits:
        print(f"tokens: {prepared.cache.hits} of {prepared.cache.hits + prepared.cache.misses} splits read from the cache {prepared.cache.root}")
    show = not args.no_progress
    glance = []
    if checked.config.search is not None:
        from cl_harness.search.cli_hooks import search_before_runs

        prepared = search_before_runs(prepared, uri, args)
        if prepared is None:
            return EXIT_OK
    results = run_experiment(
        prepared, uri, show_progress=show, on_result=lambda r: print(run_summary(r), flush=True), restart=args.restart, executor=executor,
        on_finish=glance.append,
    )
    failed = [r for r in results if r.status != "FINISHED"]
    print(f"\n{len(results) - len(failed)} of {count(len(results), 'run')} finished; results in MLflow ({uri}).")
    if glance:
        print(glance[0].closing_text())
    return EXIT_FAILED_RUNS if failed else EXIT_OK


def print_prefix_units(runs) -> None:
    """The grid's shared prefixes and the runs that start from each (--dry-run)."""
    from cl_harness.grid.plan import prefix_units

    units = prefix_units(runs)
    if units:
        print("shared prefixes (task 1 trained once by naive, then forked; --no-prefix-sharing turns this off):")
    for unit in units:
        print(f"  {unit.name:<40} for {', '.join(unit.runs)}")


def cmd_strategies(args) -> int:
    from cl_harness.config.schema import describe
    from cl_harness.strategies import default_registry

    registry = default_registry()
    problems = registry.load_installed()
    for info in registry:
        origin = registry.origin(info.name)
        print(f"{info.name}: {info.summary}" + (f" [{info.paper}]" if info.paper else "") + (f" (from {origin})" if origin else ""))
        print(f"    backbone kinds: {', '.join(info.backbone_kinds)}")
        if set(info.scenarios) != {"class_incremental", "task_incremental", "domain_incremental"}:
            print(f"    scenarios: {', '.join(info.scenarios)}")
        for name, type_name, default, help_text in describe(info.config_cls):
            print(f"    {name} ({type_name}, default {default!r})" + (f": {help_text}" if help_text else ""))
    if args.all:
        from cl_harness.strategies.unsupported import UNSUPPORTED

        print("\nunsupported Avalanche strategies (cannot work with a transformer text classifier):")
        for name, reason in UNSUPPORTED.items():
            print(f"  {name}: {reason}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return EXIT_CONFIG if problems else EXIT_OK


def cmd_compare(args) -> int:
    from cl_harness import results
    from cl_harness.config.names import file_name
    from cl_harness.grid.input_checks import check_output_folder
    from cl_harness.report.compare import markdown
    from cl_harness.report.glance import compact_table
    from cl_harness.report.html import write_report

    if args.out:
        check_output_folder(Path(args.out))
    loaded = results.load(args.experiment, args.tracking_uri, args.parent)
    comparison = loaded.data
    out = Path(args.out) if args.out else Path("reports") / file_name(comparison.experiment_name) / comparison.parent_run_id[:8]
    check_output_folder(out, "--out" if args.out else "--out (default)")
    table = loaded.comparison()
    print(markdown(table) if args.markdown else compact_table(table))
    for problem in comparison.problems():
        print(f"not finished: {problem.name} ({problem.status})" + (f": {problem.error}" if problem.error else ""))
    print(f"\nreport: {write_report(comparison, out)}")
    return EXIT_OK


def cmd_ui(args) -> int:
    from cl_harness.tracking.links import store_serves_ui
    from cl_harness.tracking.store import choose_tracking_uri
    from cl_harness.tracking.store_guard import probe_store, uri_source
    from cl_harness.ui import UIError, UIOptions, port_in_use, serve

    options = UIOptions(choose_tracking_uri(args.tracking_uri), args.host, args.port, args.workers, args.timeout)
    if not store_serves_ui(options.tracking_uri) and not port_in_use(args.host, args.port):  # a busy port is said first
        probe_store(options.tracking_uri, uri_source(args.tracking_uri), writes=False)  # the UI shows a store; it makes none
    try:
        return serve(options, say=lambda text: print(text, flush=True))
    except UIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG if exc.busy_port else EXIT_FAILED_RUNS
    except KeyboardInterrupt:  # stopped while the server was starting (it is stopped too)
        print("stopped the MLflow UI before it answered", file=sys.stderr)
        return EXIT_OK


def cmd_search_report(args) -> int:
    from cl_harness.grid.input_checks import check_output_folder
    from cl_harness.search.cli_hooks import search_report
    from cl_harness.tracking.store import choose_tracking_uri
    from cl_harness.tracking.store_guard import probe_store, uri_source

    from cl_harness.config.names import file_name

    check_output_folder(Path(args.out) if args.out else Path("reports") / file_name(args.experiment) / "search",
                        "--out" if args.out else "--out (default)")
    probe_store(choose_tracking_uri(args.tracking_uri), uri_source(args.tracking_uri), writes=False)  # reads: creates no store
    return search_report(args)


COMMANDS = {"search-report": cmd_search_report, "run": cmd_run, "validate": cmd_validate, "strategies": cmd_strategies, "compare": cmd_compare, "ui": cmd_ui}


def report_failure(exc: Exception, command: str) -> int | None:
    """Print one message for a store or disk failure and return its exit code (3); None for any other error."""
    import errno

    from cl_harness.tracking.store import is_store_failure
    from cl_harness.tracking.store_guard import StoreUnavailableError

    if isinstance(exc, StoreUnavailableError):  # the message says what to fix, for every command
        print(f"error: {str(exc)[:1000]}", file=sys.stderr)  # what to fix, the paths it names included
        return EXIT_TRACKING
    resume = command == "run"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        print(f"error: no space left on the device ({exc.filename or ''})" + ("; finished tasks' checkpoints are intact. "
              "Free space and run the same command again to resume." if resume else ""), file=sys.stderr)
        return EXIT_TRACKING
    if isinstance(exc, OSError) and exc.errno in (errno.EIO, errno.EROFS, errno.EDQUOT):
        print(f"error: cannot write {str(exc.filename or '')[:200]} ({exc.strerror})" + ("; finished tasks' checkpoints are "
              "intact. Fix the disk and run the same command again to resume." if resume else ""), file=sys.stderr)
        return EXIT_TRACKING
    if not is_store_failure(exc):
        return None
    first_line = (str(exc).strip().splitlines() or [""])[0]  # a database error goes on with its SQL statement
    print(f"error: the tracking store failed ({type(exc).__name__}: {first_line[:300]})" + (".\n"
          "  The runs' checkpoints are kept in the run folders (checkpoint_dir, default runs/); once the store is "
          "reachable, run the same command again: it resumes and logs the missing steps." if resume else ""), file=sys.stderr)
    return EXIT_TRACKING


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries(args.verbose)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM ends the run like Ctrl-C: checkpoint kept, run KILLED
    from cl_harness.errors import ConfigError

    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception as exc:
        if args.debug:
            raise
        code = report_failure(exc, args.command)
        if code is None:
            raise
        return code
    except KeyboardInterrupt:
        print("interrupted: the runs' checkpoints and logged steps are kept; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BaseException as exc:  # user code (a plugin's hook) that called sys.exit(): a failure, not the command's end
        if args.debug:
            raise
        from cl_harness.strategies.user_plugins import EXIT_HINT, process_exit

        print(f"error: the command was ended by {process_exit(exc)}\n  hint: {EXIT_HINT}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
