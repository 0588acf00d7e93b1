"""Where the pod specs are in the objects the chart and deploy/ render (the restricted-profile
checker itself is ``etha.job.security.restricted_violations``, the operator's own)."""

from __future__ import annotations

from typing import Any


def pod_spec_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec inside a Pod, a workload (Deployment, Job, ...) or None."""
    if obj.get("kind") == "Pod":
        spec: dict[str, Any] = obj["spec"]
        return spec
    template = (obj.get("spec") or {}).get("template")
    if isinstance(template, dict) and "spec" in template:
        inner: dict[str, Any] = template["spec"]
        return inner
    return None
