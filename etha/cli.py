"""The ``etha`` command: one :class:`Subcommand` per function in ``SUBCOMMANDS`` (``run-local``,
``validate``, ``explain``), each with its ``*_arguments`` and its ``cmd_*`` (an exit code)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from etha import __version__
from etha.clikube import commands as cluster_commands

#: Exit code of a refused manifest or field path (argparse's own for bad usage).
EXIT_REFUSED = 2

Command = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Subcommand:
    """One ``etha NAME``: its help line, description, arguments and what runs it (an exit code)."""

    name: str
    help: str
    description: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Command


def run_local_arguments(parser: argparse.ArgumentParser) -> None:
    _add_file(parser, nargs=None)
    parser.add_argument("--timeout", type=float, default=None, help="Give up after this many seconds.")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="The folder that stands for the runtime image's /app (workingDir: /app); default: this one.",
    )
    parser.add_argument(
        "--max-processes",
        type=int,
        default=None,
        help="Run up to this many worker processes (default: what this machine's cores and memory allow).",
    )


def validate_arguments(parser: argparse.ArgumentParser) -> None:
    _add_file(parser, nargs="*")


def explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="?", default="", metavar="FIELD.PATH", help="e.g. spec.rendezvous")


def _add_file(parser: argparse.ArgumentParser, nargs: str | None) -> None:
    what = "TrainingJob manifest(s)" if nargs else "A TrainingJob manifest"
    parser.add_argument("files", nargs=nargs or "?", metavar="FILE", help=f"{what} (YAML); - reads stdin.")
    parser.add_argument(
        "-f", "--filename", action="append", default=[], metavar="FILE", help="Alias of FILE."
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=cluster_commands.program_name(), description="Kubernetes-native rendezvous for PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"etha {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS:
        one = sub.add_parser(command.name, help=command.help, description=command.description)
        command.arguments(one)
        one.set_defaults(run=command.run)
    cluster_commands.add_commands(sub)
    return parser


def _files(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    named = args.files if isinstance(args.files, list) else [args.files] if args.files else []
    files = [*named, *args.filename]
    if not files:
        parser.error(f"{args.command}: a FILE (or -f FILE, or - for stdin) is required.")
    return [str(f) for f in files]


def cmd_run_local(args: argparse.Namespace) -> int:
    from etha.local import LocalRunError, run_local

    if len(args.files_) != 1:
        print(
            f"etha run-local: one FILE, not {len(args.files_)} ({', '.join(args.files_)}).", file=sys.stderr
        )
        return EXIT_REFUSED
    try:
        return run_local(
            args.files_[0], timeout=args.timeout, workdir=args.workdir, max_processes=args.max_processes
        )
    except LocalRunError as exc:
        print(f"etha run-local: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:  # Ctrl-C before a process started (after, it stops the run)
        return 130


def cmd_validate(args: argparse.Namespace) -> int:
    from etha.job.manifest import ManifestError, read_text, training_jobs, validate

    refused = False
    for name in args.files_:
        try:
            for doc in training_jobs(name, read_text(name)):
                try:
                    validate(doc)
                    print(f"{doc.label}: valid")
                except ManifestError as exc:
                    refused = True
                    print(exc, file=sys.stderr)
        except ManifestError as exc:
            refused = True
            print(exc, file=sys.stderr)
    return EXIT_REFUSED if refused else 0


def cmd_explain(args: argparse.Namespace) -> int:
    from etha.job.errors import InvalidSpec
    from etha.job.explain import explain
    from etha.job.manifest import API_VERSION
    from etha.job.schema import packaged_schema

    try:
        print(explain(packaged_schema(), args.path, version=API_VERSION), end="")
    except InvalidSpec as exc:
        print(f"etha explain: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


SUBCOMMANDS = (
    Subcommand(
        "run-local",
        "Run a TrainingJob manifest on this machine, without a cluster.",
        "Run the rendezvous master and every worker of a TrainingJob as local processes, "
        "with the environment the operator injects (the master's name mapped to 127.0.0.1).",
        run_local_arguments,
        cmd_run_local,
    ),
    Subcommand(
        "validate",
        "Check TrainingJob manifests offline, as the CRD and the operator would.",
        "Check every TrainingJob of each file against the CRD's schema (unknown fields, "
        "types, allowed values, bounds) and the operator's checks, without a cluster. "
        "Exit 0: all valid; 2: refused (the messages say why).",
        validate_arguments,
        cmd_validate,
    ),
    Subcommand(
        "explain",
        "Describe a TrainingJob field, like kubectl explain (no cluster needed).",
        "Print a field's description, type, default, allowed values and sub-fields "
        "from the CRD's schema, e.g. `etha explain spec.rendezvous`; no path: the top.",
        explain_arguments,
        cmd_explain,
    ),
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in cluster_commands.COMMANDS:
        return cluster_commands.run(args, parser.prog)
    if hasattr(args, "files"):
        args.files_ = _files(parser, args)
    run: Command = args.run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
