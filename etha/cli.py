"""The ``etha`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from etha import __version__
from etha.clikube import commands as cluster_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=cluster_commands.program_name(), description="Kubernetes-native rendezvous for PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"etha {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run-local",
        help="Run a TrainingJob manifest on this machine, without a cluster.",
        description="Run the rendezvous master and every worker of a TrainingJob as local processes, "
        "with the environment the operator injects (the master's name mapped to 127.0.0.1).",
    )
    run.add_argument("file", type=Path, help="A TrainingJob manifest (YAML).")
    run.add_argument("--timeout", type=float, default=None, help="Give up after this many seconds.")
    run.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="The folder that stands for the runtime image's /app (workingDir: /app); default: this one.",
    )
    run.add_argument(
        "--max-processes",
        type=int,
        default=None,
        help="Run up to this many worker processes (default: what this machine's cores and memory allow).",
    )
    cluster_commands.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in cluster_commands.COMMANDS:
        return cluster_commands.run(args, parser.prog)
    if args.command == "run-local":
        from etha.local import LocalRunError, run_local

        try:
            return run_local(
                args.file, timeout=args.timeout, workdir=args.workdir, max_processes=args.max_processes
            )
        except LocalRunError as exc:
            print(f"etha run-local: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # Ctrl-C before a process started (after, it stops the run)
            return 130
    return 2  # pragma: no cover - argparse enforces the sub-command


if __name__ == "__main__":
    sys.exit(main())
