"""Names the operator writes on objects: labels, annotations, conditions, reasons, defaults."""

from typing import Final

# --- The resource ------------------------------------------------------------------------------
# API group of the TrainingJob resource.
GROUP: Final = "etha.io"
# API version of the TrainingJob resource.
VERSION: Final = "v1alpha1"
# Plural name of the TrainingJob resource.
PLURAL: Final = "trainingjobs"
# Kind of the TrainingJob resource.
KIND: Final = "TrainingJob"

# --- Labels on every child ---------------------------------------------------------------------
# The TrainingJob a child belongs to.
LABEL_JOB: Final = "etha.io/job-name"
# "master" or "worker".
LABEL_ROLE: Final = "etha.io/role"
# A worker's rank.
LABEL_RANK: Final = "etha.io/rank"
# The whole-job attempt a pod belongs to.
LABEL_ATTEMPT: Final = "etha.io/attempt"
# Who manages the object (kubernetes' recommended label).
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
# Value of LABEL_MANAGED_BY.
MANAGED_BY: Final = "etha-operator"
# Value of LABEL_ROLE on the rendezvous master.
ROLE_MASTER: Final = "master"
# Value of LABEL_ROLE on workers.
ROLE_WORKER: Final = "worker"

# Annotation on the children kept across attempts (Service, NetworkPolicy): a hash of the spec
# they were built with; a child whose hash differs from the desired one is patched.
ANNOTATION_SPEC_HASH: Final = "etha.io/spec-hash"
# Annotation on a Workload the operator deactivated (spec.active false) because the job is
# suspended: only such a Workload is made active again when the job resumes.
ANNOTATION_SUSPENDED: Final = "etha.io/suspended"

# --- Phases and conditions ---------------------------------------------------------------------
PHASE_PENDING: Final = "Pending"
PHASE_RUNNING: Final = "Running"
PHASE_RESTARTING: Final = "Restarting"
PHASE_SUSPENDED: Final = "Suspended"
# Waiting for Kueue to admit the job's Workload (docs/scheduling.md, "Kueue"): no pod exists.
PHASE_QUEUED: Final = "Queued"
PHASE_SUCCEEDED: Final = "Succeeded"
PHASE_FAILED: Final = "Failed"
# Phases a job never leaves.
FINISHED_PHASES: Final = frozenset({PHASE_SUCCEEDED, PHASE_FAILED})

# Condition: every pod of the current attempt exists.
COND_CREATED: Final = "Created"
# Condition: every worker of the current attempt is running.
COND_RUNNING: Final = "Running"
# Condition: every pod of the current attempt is scheduled (False: the scheduler's reason).
COND_SCHEDULED: Final = "PodsScheduled"
# Condition: an edit of an immutable field reached a running attempt and was refused.
COND_SPEC_REFUSED: Final = "SpecChangeRefused"
# Condition: an object the job needs exists under its name but is not the job's own.
COND_CHILD_CONFLICT: Final = "ChildConflict"
# Condition: an attempt failed and the next one is being started (True until it runs).
COND_RESTARTING: Final = "Restarting"
# Condition: the job is suspended.
COND_SUSPENDED: Final = "Suspended"
# Condition: the job finished successfully.
COND_SUCCEEDED: Final = "Succeeded"
# Condition: the job failed for good.
COND_FAILED: Final = "Failed"
# Condition: the job waits for Kueue to admit its Workload (False once admitted, with the ClusterQueue).
COND_QUEUED: Final = "Queued"
# Condition: no rank's reported step advanced for the stall timeout (etha.progress, docs/progress.md).
COND_STALLED: Final = "Stalled"

# --- Reasons (conditions and events) -----------------------------------------------------------
# The spec is invalid; the message names the field and what was expected.
REASON_INVALID_SPEC: Final = "InvalidSpec"
# activeDeadlineSeconds passed.
REASON_DEADLINE_EXCEEDED: Final = "DeadlineExceeded"
# A pod failed and no restarts remain.
REASON_BACKOFF_LIMIT: Final = "RestartLimitExceeded"
# A spec.podFailurePolicy rule with action FailJob matched a failed pod.
REASON_POD_FAILURE_POLICY: Final = "PodFailurePolicy"
# A spec.successPolicy rule holds.
REASON_SUCCESS_POLICY: Final = "SuccessPolicy"
# A pod failed and a new attempt starts.
REASON_RESTARTING: Final = "Restarting"
# Every worker succeeded.
REASON_SUCCEEDED: Final = "AllWorkersSucceeded"
# A pod of the current attempt cannot be scheduled (the message is the scheduler's).
REASON_UNSCHEDULABLE: Final = "Unschedulable"
#: spec.scheduling.onTimeout FailJob: the attempt's pods were not placed in time.
REASON_SCHEDULE_TIMEOUT: Final = "ScheduleTimeout"
#: Events about the rendezvous: every rank joined; ranks still missing at half the timeout.
REASON_RENDEZVOUS_COMPLETE: Final = "RendezvousComplete"
REASON_RANKS_MISSING: Final = "RanksMissing"
#: The job is deleted: spec.ttlSecondsAfterFinished passed.
REASON_TTL_EXPIRED: Final = "TTLExpired"
#: spec.scheduling.gang names a scheduler whose PodGroup CRD the cluster lacks.
REASON_MISSING_CRD: Final = "PodGroupCRDMissing"
#: The operator's RBAC does not let it create the PodGroups of the gang a job asks for.
REASON_GANG_FORBIDDEN: Final = "PodGroupForbidden"
# An immutable field (replicas, template, rendezvous) was edited while the job runs.
REASON_IMMUTABLE_FIELD: Final = "ImmutableFieldChanged"
# An object of a child's name exists and is not the job's (or is a previous job's, going).
REASON_CHILD_CONFLICT: Final = "ChildConflict"
# A child was created.
REASON_CREATED: Final = "Created"
# A child kept across attempts (Service, NetworkPolicy) was patched to the job's current spec.
REASON_UPDATED: Final = "Updated"
# Not every worker joined the rendezvous within spec.rendezvous.timeoutSeconds.
# Reason of the Stalled condition, its Warning event, and of a job failed or restarted by onStall.
REASON_STALLED: Final = "Stalled"
# Reason of the condition Stalled turned False: training advances again.
REASON_ADVANCING: Final = "Advancing"
# Warning event: a rank reaches most steps last (status.progress.stragglers).
REASON_STRAGGLER: Final = "Straggler"
# Queued True before Kueue said anything of the job's Workload (created, or about to be).
REASON_WAITING_FOR_ADMISSION: Final = "WaitingForAdmission"
# Queued False: Kueue admitted the Workload (Normal event too).
REASON_ADMITTED: Final = "Admitted"
# Queued True: the Workload is deactivated (spec.active false) by someone other than the operator.
REASON_WORKLOAD_INACTIVE: Final = "WorkloadInactive"
# Warning event: Kueue evicted (or preempted) the job's Workload; its pods are deleted, no restart.
REASON_EVICTED: Final = "Evicted"
# The job stopped because its Workload is gone, or no longer admitted without an eviction
# (Kueue's jobframework StopReasons WorkloadDeleted and NotAdmitted).
REASON_WORKLOAD_DELETED: Final = "WorkloadDeleted"
REASON_NOT_ADMITTED: Final = "NotAdmitted"
# Failed: Kueue marked the job's Workload Finished while the job had not finished.
REASON_WORKLOAD_FINISHED: Final = "WorkloadFinished"
# Failed: a flavor's node label (or an admission check's update) contradicts the pod template.
REASON_ADMISSION_CONFLICT: Final = "AdmissionConflict"
# Queued True: the admission names a ResourceFlavor that does not exist (yet).
REASON_FLAVOR_MISSING: Final = "ResourceFlavorMissing"
# Failed: the cluster does not serve Kueue's Workload kind (no CRD workloads.kueue.x-k8s.io).
REASON_KUEUE_MISSING: Final = "KueueCRDMissing"
# Failed: an admission webhook (Kueue's) denied the job's Workload; the message is the webhook's.
REASON_WORKLOAD_REJECTED: Final = "WorkloadRejected"
REASON_RENDEZVOUS_TIMEOUT: Final = "RendezvousTimeout"

# --- Recovery in place (docs/recovery.md) ------------------------------------------------------
# spec.restartStrategy: restart the processes inside the pods kept, through the master.
RESTART_IN_PLACE: Final = "InPlace"
# spec.restartStrategy: make every pod of the attempt again.
RESTART_RECREATE: Final = "Recreate"
# spec.restartStrategy's values, the default first.
RESTART_STRATEGIES: Final = (RESTART_IN_PLACE, RESTART_RECREATE)
# spec.restartBackoffSeconds when unset, by strategy: an in-place restart can afford a small one.
DEFAULT_BACKOFF_IN_PLACE: Final = 1
# Condition: whether failures restart in place (False: they Recreate; the reason says why).
COND_IN_PLACE: Final = "InPlaceRestart"
# InPlaceRestart False: the worker container has no command for the agent to run.
REASON_NO_COMMAND: Final = "NoCommand"
# InPlaceRestart False: spec.rendezvous.backend etcd has no master to hold generations.
REASON_ETCD_BACKEND: Final = "EtcdBackend"
# InPlaceRestart False: a worker container failed before its agent ever reached the master.
REASON_AGENT_NOT_RUNNABLE: Final = "AgentNotRunnable"
# InPlaceRestart False: the master exited 2 (a usage error) before it ever answered the operator:
# an image pinned to an etha without the agent channel (--agent-port).
REASON_MASTER_TOO_OLD: Final = "MasterWithoutAgentChannel"
# InPlaceRestart True: the workers run under the agent.
REASON_AGENT_READY: Final = "AgentWrapped"
# Restarting (condition and event) in place: a new generation in the pods kept.
REASON_RESTARTING_IN_PLACE: Final = "RestartingInPlace"
# Restarting False: every rank of the new generation (or every pod of the new attempt) started.
REASON_RESTARTED: Final = "Restarted"
# Env of the master: the token the operator's agent-channel requests carry (random per attempt).
ENV_MASTER_TOKEN: Final = "ETHA_MASTER_TOKEN"
# Env of a wrapped worker container: the master's agent port.
ENV_AGENT_PORT: Final = "ETHA_AGENT_PORT"
# Where the agent's ConfigMap is mounted in a wrapped worker container (read-only).
AGENT_MOUNT_PATH: Final = "/etha/agent"
# The agent's file in that ConfigMap (and under AGENT_MOUNT_PATH).
AGENT_FILE: Final = "agent.py"
# The name of the agent's ConfigMap volume in a wrapped worker pod.
AGENT_VOLUME: Final = "etha-agent"

# --- Defaults ----------------------------------------------------------------------------------
# Image the master runs unless spec.rendezvous.image or the operator's settings say otherwise.
DEFAULT_RUNTIME_IMAGE: Final = "ghcr.io/etha-io/etha-runtime:0.1.0"
# Seconds workers have to reach the master unless spec.rendezvous.timeoutSeconds says otherwise.
DEFAULT_RENDEZVOUS_TIMEOUT: Final = 900
# Longest DNS label (pod hostname, service name).
MAX_DNS_LABEL: Final = 63
# Attempts a job's name must leave room for in its pods' names (0..999), beyond spec.maxRestarts.
ATTEMPTS_NAMED: Final = 1000
# Name of the container in the master pod.
MASTER_CONTAINER: Final = "rendezvous"
# Port of the master's read-only HTTP status document (GET /status, GET /healthz); the operator
# reads it while ranks join. Moves to the next port if spec.rendezvous.port takes it.
MASTER_STATUS_PORT: Final = 8080
# Name of that port on the master container.
MASTER_STATUS_PORT_NAME: Final = "status"
# Port of the master's agent channel (restarts in place, docs/recovery.md); moves to the next
# port if spec.rendezvous.port takes it.
MASTER_AGENT_PORT: Final = 8081
# Name of that port on the master container.
MASTER_AGENT_PORT_NAME: Final = "agent"
# Port of the operator's Prometheus metrics (GET /metrics); kopf's liveness endpoint keeps 8080.
OPERATOR_METRICS_PORT: Final = 8081
# Path of the Prometheus exposition, on the operator's metrics port and the master's status port.
METRICS_PATH: Final = "/metrics"
