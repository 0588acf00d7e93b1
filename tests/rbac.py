"""RBAC rules as sets of (apiGroup, resource, verb), to compare what is granted with what is used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

Grant = tuple[str, str, str]

#: Leader election's Role, in the operator's own namespace whatever rbac.scope says.
LEADER_ELECTION_GRANTS = {("coordination.k8s.io", "leases", verb) for verb in ("get", "create", "update")}


def is_leader_election(role: dict[str, Any]) -> bool:
    """The chart's leader-election Role (or its binding), apart from the operator's own."""
    return bool(role["metadata"]["name"].endswith("-leader-election"))


def grants(rules: list[dict[str, Any]]) -> set[Grant]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups") or []
        for resource in rule.get("resources") or []
        for verb in rule.get("verbs") or []
    }


def wildcards(rules: list[dict[str, Any]]) -> list[str]:
    return [
        f"{key}: {rule[key]}"
        for rule in rules
        for key in ("apiGroups", "resources", "verbs", "resourceNames")
        if "*" in (rule.get(key) or [])
    ]


def roles_in(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") in ("ClusterRole", "Role")]


def deploy_docs(root: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((root / "deploy" / "operator.yaml").read_text()) if d]
