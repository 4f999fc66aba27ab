"""gmembench command line: one subcommand per job, each implemented by the module that
owns that job (runner, workload, host probe/calibrate, validate, report, compare, qualify)."""
import argparse
import importlib
import sys

from bench import __version__, interrupts
from bench.errors import InputError

# name -> (module, help).  The module provides add_<name>_arguments(parser) and
# cli_<name>(args) -> exit code.
COMMANDS = {
    "run": ("bench.runner", "run workloads under both strategies and write results/<run-id>/"),
    "workloads": ("bench.workload", "list the workload files, or show one resolved"),
    "probe": ("bench.host.probe", "what this host's kernel supports for each strategy step"),
    "calibrate": ("bench.host.calibrate", "measure the cost model's primitives on this host"),
    "validate": ("bench.validate", "run workloads on both backends and print the disagreement"),
    "report": ("bench.report.report", "write report.md, plots and pyperf files for a results dir"),
    "compare": ("bench.compare", "regression gate: compare results dirs, BASE... CUR (exit 1 regression, 3 inconclusive)"),
    "thresholds": ("bench.thresholds", "learn the gate's per-row thresholds from identical runs on this host"),
    "qualify": ("bench.qualify", "hardware qualification: run a spec, pass/fail per check"),
    "restore": ("bench.host.state", "restore host settings a run that did not finish left changed"),
    "sweep": ("bench.sweep.cli", "run a sweep file on Dask: tidy table, conclusions, sensitivity, plots"),
    "table": ("bench.runtable", "N results dirs side by side: mean, spread, CV, change vs the first"),
}


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes are bad input like any other: one line, exit 2 (no usage dump)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="gmembench",
        description="In-place vs dual-backing guest_memfd conversion benchmarks.")
    parser.add_argument("--version", action="version", version=f"gmembench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:    # not built yet in this checkout
                continue
            raise
        p = sub.add_parser(name, help=help_text, description=help_text)
        getattr(mod, f"add_{name}_arguments")(p)
        p.set_defaults(_func=getattr(mod, f"cli_{name}"))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv:
        # no subcommand: say what there is to do (exit 2, as for any incomplete command
        # line), never start a run the user did not ask for
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "_func", None):
        parser.print_help()
        return 2
    # SIGTERM and SIGHUP (a dropped ssh session) unwind like Ctrl-C: every `finally` runs,
    # so host settings are restored, workers stopped and partial results removed
    interrupts.install()
    try:
        code = int(args._func(args) or 0)
        interrupts.check()      # a signal whose exception something swallowed
        return code
    except InputError as e:
        print(f"gmembench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gmembench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # whoever read our output stopped reading (`| head`): stop quietly, as shell tools
        # do; stdout goes to /dev/null so that the interpreter's final flush cannot fail too
        import os
        import signal
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except SystemExit as e:
        if isinstance(e.code, int) and e.code > 128:
            print(f"gmembench: stopped by signal {e.code - 128}", file=sys.stderr)
        raise

