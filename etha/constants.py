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
# Rank within the pod; one process per pod, so always 0.
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
# World size, for etha.kvstore.from_env().
ENV_WORLD_SIZE_ETHA: Final = "ETHA_WORLD_SIZE"
# Rank, for etha.kvstore.from_env().
ENV_RANK_ETHA: Final = "ETHA_RANK"
# The TrainingJob's name: the store's default key namespace.
ENV_JOB_NAME: Final = "ETHA_JOB_NAME"
# Whole-job attempt number, 0 for the first run.
ENV_ATTEMPT: Final = "ETHA_ATTEMPT"

# --- Rendezvous --------------------------------------------------------------------------------
# Port the rendezvous master listens on unless spec.rendezvous.port says otherwise.
DEFAULT_MASTER_PORT: Final = 29500
# Client timeout (seconds) used by from_env() when ETHA_KVSTORE_TIMEOUT is unset.
DEFAULT_CLIENT_TIMEOUT: Final = 900.0
# Raw (unscoped) key prefix under which from_env() records each rank that joined.
JOINED_KEY_PREFIX: Final = "__etha__/joined/"
