from etha.job.env import worker_env


def test_worker_env_carries_the_contract() -> None:
    env = worker_env(job_name="j", master_addr="j-master.ns.svc", port=29500, world_size=4, rank=2, attempt=1)
    assert env == {
        "MASTER_ADDR": "j-master.ns.svc",
        "MASTER_PORT": "29500",
        "WORLD_SIZE": "4",
        "RANK": "2",
        "LOCAL_RANK": "0",
        "TORCHELASTIC_USE_AGENT_STORE": "True",
        "TORCHELASTIC_RESTART_COUNT": "1",
        "ETHA_KVSTORE_HOST": "j-master.ns.svc",
        "ETHA_KVSTORE_PORT": "29500",
        "ETHA_WORLD_SIZE": "4",
        "ETHA_RANK": "2",
        "ETHA_JOB_NAME": "j",
        "ETHA_ATTEMPT": "1",
    }
