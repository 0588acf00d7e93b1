"""``python -m etha.operator``: run the operator (kopf) against the cluster.

Uses in-cluster config when running in a pod, else ``KUBECONFIG`` (or ~/.kube/config).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import getpass
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any, cast

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from etha.job import constants as c
from etha.job.schema import missing_fields, openapi_schema, packaged_schema
from etha.operator import handlers, leader, metrics
from etha.operator.config import ConfigError, OperatorConfig
from etha.operator.k8s import Api

#: The CRD the operator serves, read at start to check it has every field this version needs.
CRD_NAME = f"{c.PLURAL}.{c.GROUP}"
#: What brings an installed CRD up to date (helm upgrade never upgrades a chart's crds/).
CRD_UPGRADE = "kubectl apply -f charts/etha-operator/crds/ (or deploy/crds/ for the plain manifests)"
#: Field paths named in the refusal before "and N more".
CRD_MISSING_SHOWN = 10

logger = logging.getLogger("etha.operator")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m etha.operator", description="Run the etha operator.")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace", "-n", action="append", default=[], help="Watch this namespace (repeatable)."
    )
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="Watch every namespace (the default)."
    )
    parser.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="Liveness endpoint URL.")
    parser.add_argument("--verbose", "-v", action="store_true", help="Debug logging.")
    metrics.add_arguments(parser)
    leader.add_arguments(parser)
    return parser


def load_api_client(connections: int) -> client.ApiClient:
    """The kubernetes client's configuration (in-cluster, else KUBECONFIG), with ``connections``
    pooled connections (the Api's concurrency)."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    settings = client.Configuration.get_default_copy()
    settings.connection_pool_maxsize = connections
    return client.ApiClient(settings)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    try:
        config = OperatorConfig.from_env(os.environ)
    except ConfigError as exc:
        logging.getLogger("etha.operator").error("%s", exc)
        return 2
    meter = metrics.OperatorMetrics()
    try:
        meter.serve(args.metrics_port, args.metrics_host)
    except OSError as exc:
        logging.getLogger("etha.operator").error(
            "cannot serve metrics on %s:%d: %s", args.metrics_host, args.metrics_port, exc
        )
        return 1
    api_client = load_api_client(config.create_concurrency)
    problem = check_installed_crd(api_client)
    if problem is not None:
        logger.error("%s", problem)
        return 2
    registry = handlers.registry(config)
    # kopf logs in as the kubernetes client does (in-cluster, else KUBECONFIG).
    kopf.on.login(registry=registry)(kopf.login_via_client)
    clusterwide = args.all_namespaces or not args.namespace
    api = Api(api_client, config.create_concurrency, on_request=meter.api_request)
    operate = functools.partial(
        kopf.operator,
        clusterwide=clusterwide,
        namespaces=() if clusterwide else list(args.namespace),
        # Elected, leader.run serves liveness from the start (kopf runs only on the leader).
        liveness_endpoint=None if args.leader_elect else args.liveness,
        # One active replica (alone, or the Lease's holder): no kopf peering, so no
        # KopfPeering resources and no RBAC for them.
        standalone=True,
        identity=own_identity(),  # type: ignore[arg-type]  # kopf.Identity, a NewType of str, is private
        registry=registry,
        # The metrics served are the ones the controller and the API module count into.
        memo=handlers.operator_memo(config, api, meter),
    )
    if args.leader_elect:
        return elected(args, api, operate)
    asyncio.run(operate())
    return 0


def check_installed_crd(api_client: client.ApiClient) -> str | None:
    """Why the installed CRD cannot serve this operator (a refusal to log), or None: it has every
    field, or it could not be read (RBAC without the cluster right, rbac.scope namespaced: a
    warning, and the operator goes on)."""
    api = client.ApiextensionsV1Api(api_client)
    try:
        response = api.read_custom_resource_definition(CRD_NAME, _preload_content=False)
        installed = json.loads(cast(Any, response).data)  # the raw response: no model types
    except ApiException as exc:
        if exc.status == 404:
            return f"The CRD {CRD_NAME} is not installed: run {CRD_UPGRADE}."
        logger.warning(
            "Could not read the CRD %s to check it is up to date (HTTP %s %s); going on. "
            "After an upgrade, run %s.",
            CRD_NAME, exc.status, exc.reason, CRD_UPGRADE,
        )  # fmt: skip
        return None
    return crd_problem(installed)


def crd_problem(installed: dict[str, Any]) -> str | None:
    """The refusal naming the fields the installed CRD lacks (against the packaged one), or None."""
    missing = missing_fields(packaged_schema(), openapi_schema(installed))
    if not missing:
        return None
    shown = ", ".join(missing[:CRD_MISSING_SHOWN])
    more = f" and {len(missing) - CRD_MISSING_SHOWN} more" if len(missing) > CRD_MISSING_SHOWN else ""
    return (
        f"The installed CRD {CRD_NAME} is older than this operator: it lacks {shown}{more}. "
        f"Apply the new CRD first (helm upgrade does not upgrade it): {CRD_UPGRADE}."
    )


def elected(args: argparse.Namespace, api: Api, operate: functools.partial[Any]) -> int:
    """Run ``operate`` while holding the Lease (leader.py); the operator's writes stop as soon as
    it may no longer be the holder."""
    try:
        namespace = leader.lease_namespace(args, dict(os.environ))
    except ValueError as exc:
        logging.getLogger("etha.operator").error("%s", exc)
        return 2
    identity = leader.own_identity()
    elector = leader.Elector(Api(load_api_client(2), 2), namespace, args.leader_election_id, identity)
    api.may_write = elector.is_leader
    return leader.run(operate, elector, args.liveness)


def own_identity() -> str:
    """kopf's name for this operator process: ``user@host``. kopf's own default asks
    ``getpass.getuser()``, which raises for a numeric user with no /etc/passwd entry, as the
    images run (65532; the kind tier saw the chart's operator crash at start)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


if __name__ == "__main__":
    sys.exit(main())
