"""What a TrainingJob's spec may not hold for the operator's sake, and the bounds it documents
(docs/operator.md, "What it refuses"): the size of a job's pod manifests, and the labels and
annotations that say which gang a pod belongs to. Pure."""

from __future__ import annotations

import json
from typing import Any, Final

from etha.job.errors import InvalidSpec
from etha.job.scheduling import (
    ANNOTATION_KUEUE_TOTAL,
    ANNOTATION_VOLCANO_GROUP,
    LABEL_COSCHEDULING_GROUP,
    LABEL_KUEUE_GROUP,
)

# Most worker pods a job may have (spec.replicas; the CRD's maximum, for etha run-local too).
MAX_REPLICAS: Final = 10000
# Most bytes of worker pod manifests one job may have (its template's size x spec.replicas):
# the operator builds an attempt's missing pods in memory.
MAX_JOB_MANIFEST_BYTES: Final = 256 * 1024**2
# Template labels and annotations the operator sets to put a pod in its job's gang; one written
# in the template would put the pods in another job's gang.
RESERVED_LABELS: Final = (LABEL_COSCHEDULING_GROUP, LABEL_KUEUE_GROUP)
RESERVED_ANNOTATIONS: Final = (ANNOTATION_VOLCANO_GROUP, ANNOTATION_KUEUE_TOTAL)


def check_job_size(template: dict[str, Any], replicas: int) -> None:
    """Refuse a job with more than MAX_REPLICAS pods, or whose worker pods (its template
    serialized, x spec.replicas) exceed MAX_JOB_MANIFEST_BYTES."""
    if replicas > MAX_REPLICAS:
        raise InvalidSpec("spec.replicas", f"spec.replicas ({replicas}) must be at most {MAX_REPLICAS}.")
    size = len(json.dumps(template, separators=(",", ":"), default=str).encode())
    if size * replicas > MAX_JOB_MANIFEST_BYTES:
        raise InvalidSpec(
            "spec.template",
            f"spec.template is {size} bytes; x spec.replicas ({replicas}) = {human_bytes(size * replicas)} "
            f"of pods, more than the {human_bytes(MAX_JOB_MANIFEST_BYTES)} a job may have.",
        )


def check_reserved_keys(template: dict[str, Any]) -> None:
    """Refuse a template that sets a gang's label or annotation (the operator sets them)."""
    meta = template.get("metadata") or {}
    for kind, reserved in (("labels", RESERVED_LABELS), ("annotations", RESERVED_ANNOTATIONS)):
        keys = meta.get(kind) if isinstance(meta, dict) else None
        for key in reserved:
            if isinstance(keys, dict) and key in keys:
                path = f"spec.template.metadata.{kind}"
                raise InvalidSpec(
                    path,
                    f"{path} sets {key} ({keys[key]!r}), which the operator sets to put the pods in "
                    "their own job's gang (spec.scheduling); remove it.",
                )


def human_bytes(count: int) -> str:
    """262144 -> '256 KiB', 2621440000 -> '2.4 GiB'."""
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= size:
            return f"{count / size:.1f}".removesuffix(".0") + f" {unit}"
    return f"{count} bytes"
