"""``etha status`` and ``etha logs``: their arguments, and what they run. Registered on the
``etha`` parser by :func:`add_commands`; ``kubectl-etha`` (the kubectl plugin) is the same entry point."""

from __future__ import annotations

import argparse
import os
import sys

from etha.clikube import logs
from etha.clikube.format import format_status
from etha.clikube.kube import Cluster, ClusterError, connect

#: The name kubectl gives a plugin's executable: ``kubectl etha ...`` runs ``kubectl-etha ...``.
PLUGIN_EXECUTABLE = "kubectl-etha"
#: The sub-commands this module runs.
COMMANDS = ("status", "logs")


def program_name(argv0: str | None = None) -> str:
    """``kubectl etha`` when run as the kubectl plugin, else ``etha``."""
    called = os.path.basename(argv0 if argv0 is not None else sys.argv[0])
    return "kubectl etha" if called.startswith(PLUGIN_EXECUTABLE) else "etha"


def _cluster_flags() -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    add = flags.add_argument
    add("--kubeconfig", default=None, help="The kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).")
    add("--context", default=None, help="The kubeconfig context (default: the current one).")
    add("-n", "--namespace", default=None, help="The job's namespace (default: the context's).")
    return flags


#: Each command's one-line help (``etha --help``) and description (``etha COMMAND --help``).
_HELP = {
    "status": (
        "Show a TrainingJob on the cluster: phase, rendezvous, restarts, workers, events.",
        "Show a TrainingJob: its phase, the ranks joined and missing, restarts and the last failure, "
        "workers by phase, conditions worth a look, progress, and its last 10 events.",
    ),
    "logs": (
        "Print the logs of a TrainingJob's workers (every rank, or one), each line prefixed.",
        "Print the logs of the pods of the job's current attempt, each line prefixed '[rank N] ' "
        "(or '[master] ').",
    ),
}


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``status`` and ``logs`` to the ``etha`` parser's sub-commands."""
    flags = _cluster_flags()
    parsers = {}
    for name, (short, long) in _HELP.items():
        parsers[name] = sub.add_parser(name, parents=[flags], help=short, description=long)
        parsers[name].add_argument("job", help="The TrainingJob's name.")
    add = parsers["logs"].add_argument
    add("--rank", type=int, default=None, help="Only this rank's pod (default: every rank).")
    add("-f", "--follow", action="store_true", help="Stream until the pods end (or Ctrl-C).")
    add("--previous", action="store_true", help="The pods of the attempt before this one, if any is left.")
    add("--master", action="store_true", help="The rendezvous master's pod instead.")


def run(args: argparse.Namespace, prog: str = "etha") -> int:
    """Runs ``etha status`` or ``etha logs``: 0 done, 1 failed (the reason on stderr), 130 Ctrl-C."""
    try:
        cluster = connect(args.kubeconfig, args.context, args.namespace)
        if args.command == "status":
            return _status(cluster, args.job)
        return _logs(cluster, args)
    except ClusterError as exc:
        print(f"{prog} {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _status(cluster: Cluster, name: str) -> int:
    job = cluster.trainingjob(name)
    sys.stdout.write(format_status(job, cluster.events(name)))
    return 0


def _logs(cluster: Cluster, args: argparse.Namespace) -> int:
    job = cluster.trainingjob(args.job)
    labels = logs.selector(job, args.rank, args.master, args.previous)
    chosen = logs.targets(cluster.pods(labels))
    if not chosen:
        raise logs.nothing_found(job, labels, args.previous)
    return logs.print_logs(cluster, chosen, args.follow)
