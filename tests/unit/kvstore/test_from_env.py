from __future__ import annotations

import pytest

from etha.kvstore import StoreConfigError, from_env

FULL = {"ETHA_KVSTORE_HOST": "m", "ETHA_KVSTORE_PORT": "29500", "ETHA_WORLD_SIZE": "2", "ETHA_RANK": "1"}


@pytest.mark.parametrize(
    ("env", "match"),
    [
        (
            {k: v for k, v in FULL.items() if k != "ETHA_KVSTORE_HOST"},
            "ETHA_KVSTORE_HOST \\(or MASTER_ADDR\\) is not set",
        ),
        ({k: v for k, v in FULL.items() if k != "ETHA_RANK"}, "ETHA_RANK \\(or RANK\\) is not set"),
        ({**FULL, "ETHA_KVSTORE_PORT": "http"}, "ETHA_KVSTORE_PORT \\('http'\\) must be an integer"),
        ({**FULL, "ETHA_KVSTORE_PORT": "0"}, "ETHA_KVSTORE_PORT \\(0\\) must be in 1..65535"),
        ({**FULL, "ETHA_WORLD_SIZE": "0"}, "ETHA_WORLD_SIZE \\(0\\) must be >= 1"),
        ({**FULL, "ETHA_RANK": "2"}, "ETHA_RANK \\(2\\) must be in 0..1"),
        (
            {**FULL, "ETHA_KVSTORE_TIMEOUT": "-3"},
            "ETHA_KVSTORE_TIMEOUT \\('-3'\\) must be a number of seconds > 0",
        ),
    ],
    ids=["no-host", "no-rank", "port-not-int", "port-zero", "world-zero", "rank-too-big", "bad-timeout"],
)
def test_from_env_names_the_bad_variable(env: dict[str, str], match: str) -> None:
    with pytest.raises(StoreConfigError, match=match):
        from_env(env)


def test_from_env_falls_back_to_torch_names() -> None:
    env = {"MASTER_ADDR": "m", "MASTER_PORT": "99999", "WORLD_SIZE": "2", "RANK": "0"}
    with pytest.raises(StoreConfigError, match="MASTER_PORT \\(99999\\)"):
        from_env(env)


def test_in_a_torchrun_process_the_ranks_are_torchruns() -> None:
    """torchrun sets TORCHELASTIC_RUN_ID and the process's global RANK/WORLD_SIZE: those are read,
    not the pod's ETHA_RANK/ETHA_WORLD_SIZE."""
    torchrun = {**FULL, "TORCHELASTIC_RUN_ID": "job-0", "WORLD_SIZE": "4", "RANK": "7"}
    with pytest.raises(StoreConfigError, match=r"Environment variable RANK \(7\) must be in 0\.\.3"):
        from_env(torchrun)
    with pytest.raises(StoreConfigError, match="Environment variable RANK is not set"):
        from_env({k: v for k, v in torchrun.items() if k != "RANK"})
