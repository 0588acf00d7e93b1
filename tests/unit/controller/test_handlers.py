"""The operator's kopf settings and what it watches."""

from __future__ import annotations

import kopf
import pytest

from etha.job import constants as c
from etha.operator.config import OperatorConfig
from etha.operator.handlers import configure_kopf, registry


def test_kopf_scans_no_crds_or_namespaces_the_chart_does_not_grant() -> None:
    # With scanning on, kopf lists CustomResourceDefinitions and Namespaces cluster-wide: a
    # namespaced install (no cluster rights) was refused and never handled a job.
    settings = kopf.OperatorSettings()
    assert settings.scanning.disabled is False
    configure_kopf(settings=settings)
    assert settings.scanning.disabled is True


def _label_selector(settings: kopf.OperatorSettings, resource: kopf.Resource) -> str:
    # What kopf sends as `labelSelector=` on the list and watch of ``resource``
    # (kopf/_cogs/clients/fetching.py and watching.py build it so).
    return ",".join(sorted(set(settings.watching.label_selectors.collect(resource))))


def _watched(reg: kopf.OperatorRegistry) -> set[kopf.Resource]:
    selectors = reg._indexing.get_all_selectors() | reg._watching.get_all_selectors()
    return {kopf.Resource(s.group, s.version, s.any_name) for s in selectors}


@pytest.mark.parametrize(
    ("resource", "selector"),
    [
        (kopf.Resource("", "v1", "pods"), "etha.io/job-name"),
        (kopf.Resource("", "v1", "services"), "etha.io/job-name"),
        (kopf.Resource("networking.k8s.io", "v1", "networkpolicies"), "etha.io/job-name"),
        (kopf.Resource("kueue.x-k8s.io", "v1beta2", "workloads"), "etha.io/job-name"),
        (kopf.Resource(c.GROUP, c.VERSION, c.PLURAL), ""),
    ],
    ids=["pods", "services", "networkpolicies", "workloads", "trainingjobs-unfiltered"],
)
def test_the_api_server_filters_each_child_kind_by_the_job_label(
    resource: kopf.Resource, selector: str
) -> None:
    # kopf's `labels=` on a handler filters client-side: the operator listed, watched and decoded
    # every pod of the cluster. The selector goes on the list and watch requests instead.
    settings = kopf.OperatorSettings()
    configure_kopf(settings=settings)
    assert _label_selector(settings, resource) == selector


@pytest.mark.parametrize("network_policy", [True, False], ids=["with-policies", "without-policies"])
def test_every_child_kind_the_registry_watches_has_the_selector(network_policy: bool) -> None:
    reg = registry(OperatorConfig(network_policy=network_policy))
    settings = kopf.OperatorSettings()
    configure_kopf(settings=settings)
    watched = _watched(reg)
    assert kopf.Resource(c.GROUP, c.VERSION, c.PLURAL) in watched
    assert (kopf.Resource("networking.k8s.io", "v1", "networkpolicies") in watched) is network_policy
    selectors = {r.plural: _label_selector(settings, r) for r in watched}
    assert selectors.pop(c.PLURAL) == ""
    assert selectors and set(selectors.values()) == {c.LABEL_JOB}, selectors


@pytest.mark.parametrize("mode", ["Workload", "PodGroup"])
def test_workloads_are_watched_only_in_workload_mode(mode: str) -> None:
    # Their admission wakes the job at once; in PodGroup mode the operator has no Kueue RBAC.
    watched = _watched(registry(OperatorConfig(kueue_mode=mode)))
    assert (kopf.Resource("kueue.x-k8s.io", "v1beta2", "workloads") in watched) is (mode == "Workload")
