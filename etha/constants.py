"""Names shared by the operator (which injects them) and the worker library (which reads them).

Importing this module costs nothing: no torch, no kopf, no kubernetes.
"""

from typing import Final

# --- The environment injected into every worker container (see CONTRACT.md) -------------------
# DNS name of the rendezvous master, read by torch's env:// init method.
ENV_MASTER_ADDR: Final = "MASTER_ADDR"
# Port of the rendezvous master, read by torch's env:// init method.
ENV_MASTER_PORT: Final = "MASTER_PORT"
# Number of workers in the job (spec.replicas), read by torch.
ENV_WORLD_SIZE: Final = "WORLD_SIZE"
# This worker's index, 0 .. WORLD_SIZE-1, read by torch.
ENV_RANK: Final = "RANK"
# Rank within the pod: 0 for the pod's own process (torchrun sets each of its processes' own).
ENV_LOCAL_RANK: Final = "LOCAL_RANK"
# "True": torch's env:// connects every rank, rank 0 included, to the master's store as a client.
ENV_TORCHELASTIC_USE_AGENT_STORE: Final = "TORCHELASTIC_USE_AGENT_STORE"
# Whole-job restart count; torch prefixes its keys with it so attempts never mix.
ENV_TORCHELASTIC_RESTART_COUNT: Final = "TORCHELASTIC_RESTART_COUNT"
# Host of the etha store, for etha.kvstore.from_env().
ENV_KVSTORE_HOST: Final = "ETHA_KVSTORE_HOST"
# Port of the etha store, for etha.kvstore.from_env().
ENV_KVSTORE_PORT: Final = "ETHA_KVSTORE_PORT"
# Optional client timeout in seconds for etha.kvstore.from_env().
ENV_KVSTORE_BACKEND: Final = "ETHA_KVSTORE_BACKEND"  # "tcp" (default) or "etcd"
ENV_ETCD_ENDPOINTS: Final = "ETHA_ETCD_ENDPOINTS"  # comma-separated host:port, for the etcd backend
ENV_KVSTORE_TIMEOUT: Final = "ETHA_KVSTORE_TIMEOUT"
# etcd backend: the PEM CA file that verifies etcd's certificate (set: TLS, even for host:port).
ENV_ETCD_CA_FILE: Final = "ETHA_ETCD_CA_FILE"
# etcd backend: the PEM client certificate presented to etcd (with ETHA_ETCD_KEY_FILE).
ENV_ETCD_CERT_FILE: Final = "ETHA_ETCD_CERT_FILE"
# etcd backend: the PEM private key of ETHA_ETCD_CERT_FILE.
ENV_ETCD_KEY_FILE: Final = "ETHA_ETCD_KEY_FILE"
# etcd backend: the etcd user the store logs in as (with ETHA_ETCD_PASSWORD_FILE).
ENV_ETCD_USERNAME: Final = "ETHA_ETCD_USERNAME"
# etcd backend: the file holding that user's password (never the password itself).
ENV_ETCD_PASSWORD_FILE: Final = "ETHA_ETCD_PASSWORD_FILE"
# Operator: the Secret (ca.crt, tls.crt, tls.key, password) it mounts into etcd-backend workers.
ENV_ETCD_CREDENTIALS_SECRET: Final = "ETHA_ETCD_CREDENTIALS_SECRET"
# World size, for etha.kvstore.from_env().
ENV_WORLD_SIZE_ETHA: Final = "ETHA_WORLD_SIZE"
# Rank, for etha.kvstore.from_env().
ENV_RANK_ETHA: Final = "ETHA_RANK"
# The TrainingJob's name: the store's default key namespace.
ENV_JOB_NAME: Final = "ETHA_JOB_NAME"
# The keys' namespace of backend etcd: one TrainingJob (by namespace, name and uid) and attempt, so
# two jobs of one name, a job made again, or the next attempt never read each other's keys.
ENV_KVSTORE_NAMESPACE: Final = "ETHA_KVSTORE_NAMESPACE"
# Whole-job attempt number, 0 for the first run.
ENV_ATTEMPT: Final = "ETHA_ATTEMPT"

# --- torchrun: every flag has a PET_<FLAG> variable; these make `torchrun train.py` need no flag ---
# Prefix of every variable torchrun reads as a flag (a template must not set any: the operator does).
ENV_TORCHRUN_PREFIX: Final = "PET_"
# torchrun --nnodes: the number of worker pods (fixed: min = max = spec.replicas).
ENV_PET_NNODES: Final = "PET_NNODES"
# torchrun --nproc-per-node: spec.procsPerWorker, resolved.
ENV_PET_NPROC_PER_NODE: Final = "PET_NPROC_PER_NODE"
# torchrun --rdzv-backend: c10d, a client of the job's master.
ENV_PET_RDZV_BACKEND: Final = "PET_RDZV_BACKEND"
# torchrun --rdzv-endpoint: the master's host:port.
ENV_PET_RDZV_ENDPOINT: Final = "PET_RDZV_ENDPOINT"
# torchrun --rdzv-id: one per attempt, so a restarted attempt never meets the previous one.
ENV_PET_RDZV_ID: Final = "PET_RDZV_ID"
# torchrun --rdzv-conf: is_host=false (every agent a client) and timeouts from spec.rendezvous.
ENV_PET_RDZV_CONF: Final = "PET_RDZV_CONF"
# torchrun --max-restarts: 0, the operator restarts the whole job (spec.maxRestarts).
ENV_PET_MAX_RESTARTS: Final = "PET_MAX_RESTARTS"
# Set by torchrun in each process it starts: from_env() then reads torchrun's RANK and WORLD_SIZE.
ENV_TORCHELASTIC_RUN_ID: Final = "TORCHELASTIC_RUN_ID"
# torchrun's rendezvous backend the operator configures (spec.rendezvous.torchrunBackend's default).
TORCHRUN_RDZV_BACKEND: Final = "c10d"
# etha's own (etha.kvstore.torchrun): c10d, with the master as the processes' store too; needs etha
# in the worker image.
TORCHRUN_ETHA_BACKEND: Final = "etha"
TORCHRUN_BACKENDS: Final = (TORCHRUN_RDZV_BACKEND, TORCHRUN_ETHA_BACKEND)

# --- Rendezvous --------------------------------------------------------------------------------
# Port the rendezvous master listens on unless spec.rendezvous.port says otherwise.
DEFAULT_MASTER_PORT: Final = 29500
# Client timeout (seconds) used by from_env() when ETHA_KVSTORE_TIMEOUT is unset.
DEFAULT_CLIENT_TIMEOUT: Final = 900.0
# Raw (unscoped) key prefix under which from_env() records each rank that joined.
JOINED_KEY_PREFIX: Final = "__etha__/joined/"

# --- etha run-local ------------------------------------------------------------------------------
# Set in every process run-local starts (not by the operator): marks the run's processes, wherever
# they are reparented or whichever session they start, so that stopping the run finds every one.
ENV_RUN_LOCAL_ID: Final = "ETHA_RUN_LOCAL_ID"
