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


# --- etcd TLS and auth settings (etha.kvstore.etcd.options_from_env) ---------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, {}),
        ({"ETHA_ETCD_CA_FILE": "/s/ca.crt"}, {"ca_file": "/s/ca.crt"}),
        (
            {
                "ETHA_ETCD_CA_FILE": "/s/ca.crt",
                "ETHA_ETCD_CERT_FILE": "/s/tls.crt",
                "ETHA_ETCD_KEY_FILE": "/s/tls.key",
                "ETHA_ETCD_USERNAME": "etha",
                "ETHA_ETCD_PASSWORD_FILE": "/s/password",
            },
            {
                "ca_file": "/s/ca.crt",
                "cert_file": "/s/tls.crt",
                "key_file": "/s/tls.key",
                "username": "etha",
                "password_file": "/s/password",
            },
        ),
        ({"ETHA_ETCD_USERNAME": ""}, {}),
    ],
    ids=["none", "ca-only", "all", "empty-is-unset"],
)
def test_etcd_security_options_from_env(env: dict[str, str], expected: dict[str, str]) -> None:
    from etha.kvstore.etcd import options_from_env

    assert options_from_env(env) == expected


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"ETHA_ETCD_CERT_FILE": "/s/tls.crt"}, r"cert_file is set but key_file is not"),
        ({"ETHA_ETCD_USERNAME": "etha"}, r"username is set but password_file is not"),
        ({"ETHA_ETCD_PASSWORD_FILE": "/s/pw"}, r"password_file is set but username is not"),
        ({"ETHA_ETCD_USERNAME": "etha", "ETHA_ETCD_PASSWORD_FILE": "/nonexistent/pw"}, r"'/nonexistent/pw'"),
        ({"ETHA_ETCD_CA_FILE": "/nonexistent/ca.crt"}, r"ca_file \('/nonexistent/ca.crt'\)"),
    ],
    ids=["cert-without-key", "user-without-password", "password-without-user", "no-password-file", "no-ca"],
)
def test_bad_etcd_security_settings_are_named_before_connecting(env: dict[str, str], match: str) -> None:
    base = {
        "ETHA_KVSTORE_BACKEND": "etcd",
        "ETHA_ETCD_ENDPOINTS": "127.0.0.1:9",
        "ETHA_WORLD_SIZE": "1",
        "ETHA_RANK": "0",
    }
    with pytest.raises(StoreConfigError, match=match):
        from_env({**base, **env})
