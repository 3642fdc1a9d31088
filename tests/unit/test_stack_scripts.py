"""The local stack's scripts by what they print, nothing started: each node's configuration and the
GATEWAY_* variables, for the single stack and for STACK=cluster (deploy/kafka-cluster.sh,
deploy/redis-cluster.sh); and the ports `make run` (deploy/run.sh) serves on."""

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(stack_dir: Path, script: str, *arguments: str, **env: str) -> subprocess.CompletedProcess[str]:
    """deploy/SCRIPT ARGUMENTS with the stack in `stack_dir` and no GATEWAY_* or STACK* from outside."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("GATEWAY_", "STACK"))}
    clean.update(STACK_DIR=str(stack_dir), **env)
    command = ["bash", str(ROOT / "deploy" / script), *arguments]
    return subprocess.run(command, env=clean, capture_output=True, text=True, timeout=30)


def properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return {key: value for key, value in pairs}


def redis_conf(text: str) -> dict[str, str]:
    pairs = (line.split(" ", 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return {key: value for key, value in pairs}


DURABILITY = ("default.replication.factor", "min.insync.replicas", "unclean.leader.election.enable")
INTERNAL_TOPICS = (
    "offsets.topic.replication.factor",
    "transaction.state.log.replication.factor",
    "transaction.state.log.min.isr",
    "share.coordinator.state.topic.replication.factor",
    "share.coordinator.state.topic.min.isr",
)


@pytest.mark.parametrize("node", [1, 2, 3])
def test_kafka_cluster_node_is_a_combined_kraft_node_of_a_three_voter_quorum(tmp_path, node):
    done = run(tmp_path, "kafka-cluster.sh", "config", str(node))
    assert done.returncode == 0, done.stderr
    config = properties(done.stdout)
    assert config["process.roles"] == "broker,controller" and config["node.id"] == str(node)
    assert config["controller.quorum.voters"] == "1@127.0.0.1:19292,2@127.0.0.1:19293,3@127.0.0.1:19294"
    assert config["listeners"] == f"PLAINTEXT://127.0.0.1:{19191 + node},CONTROLLER://127.0.0.1:{19291 + node}"
    assert config["advertised.listeners"] == f"PLAINTEXT://127.0.0.1:{19191 + node}"
    assert config["log.dirs"] == str(tmp_path / "kafka-cluster" / f"node-{node}" / "data")
    assert [config[key] for key in DURABILITY] == ["3", "2", "false"]
    assert [config[key] for key in INTERNAL_TOPICS] == ["3", "3", "2", "3", "2"]
    assert config["num.partitions"] == "3" and config["auto.create.topics.enable"] == "false"
    # a dead node is fenced (new leaders, shrunk ISRs) within the gateway's delivery timeout
    assert int(config["broker.session.timeout.ms"]) < 5000
    assert int(config["broker.heartbeat.interval.ms"]) * 3 <= int(config["broker.session.timeout.ms"])
    assert not list(tmp_path.iterdir()), "config writes nothing"


def test_kafka_cluster_ports_are_overridable_and_nodes_checked(tmp_path):
    moved = {"STACK_KAFKA_CLUSTER_PORT": "29000", "STACK_KAFKA_CLUSTER_CONTROLLER_PORT": "29100"}
    done = run(tmp_path, "kafka-cluster.sh", "config", "3", **moved)
    config = properties(done.stdout)
    assert config["listeners"] == "PLAINTEXT://127.0.0.1:29002,CONTROLLER://127.0.0.1:29102"
    assert config["controller.quorum.voters"] == "1@127.0.0.1:29100,2@127.0.0.1:29101,3@127.0.0.1:29102"
    for wrong in ("0", "4", "x", ""):
        refused = run(tmp_path, "kafka-cluster.sh", "config", wrong)
        assert refused.returncode != 0 and "a node is a number from 1 to 3" in refused.stderr


def test_single_broker_keeps_its_listeners_and_replication_of_one(tmp_path):
    config = properties(run(tmp_path, "kafka.sh", "config").stdout)
    assert config["node.id"] == "1" and config["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert config["listeners"] == ("PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093,FAULTS://127.0.0.1:19096")
    assert config["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092,FAULTS://127.0.0.1:19095"
    assert config["log.dirs"] == str(tmp_path / "kafka" / "data")
    assert [config[key] for key in DURABILITY] == ["1", "1", "false"]
    assert [config[key] for key in INTERNAL_TOPICS] == ["1", "1", "1", "1", "1"]


@pytest.mark.parametrize("port", range(17001, 17007))
def test_redis_cluster_node_has_cluster_mode_an_aof_and_a_short_node_timeout(tmp_path, port):
    done = run(tmp_path, "redis-cluster.sh", "config", str(port))
    assert done.returncode == 0, done.stderr
    conf = redis_conf(done.stdout)
    home = tmp_path / "redis-cluster" / str(port)
    assert conf["port"] == str(port) and conf["bind"] == "127.0.0.1" and conf["dir"] == str(home)
    assert conf["cluster-enabled"] == "yes" and conf["cluster-config-file"] == "nodes.conf"
    assert conf["cluster-port"] == str(port + 100)
    assert conf["cluster-node-timeout"] == "2000"
    assert conf["appendonly"] == "yes" and conf["appendfsync"] == "everysec"
    assert conf["pidfile"] == str(home / "redis.pid") and conf["logfile"] == str(home / "redis.log")


def test_redis_cluster_refuses_a_port_outside_it(tmp_path):
    refused = run(tmp_path, "redis-cluster.sh", "kill-node", "16379")
    assert refused.returncode != 0 and "17001 17002 17003 17004 17005 17006" in refused.stderr


def stack_ports(tmp_path: Path) -> list[int]:
    """Every port a service of the single stack or of the cluster stack listens on."""
    ports = re.findall(r":(\d+)", run(tmp_path, "kafka.sh", "config").stdout.split("listeners=", 1)[1])
    ports = [int(port) for port in set(ports)] + [16379, 16380, 15432, 18474]  # Redis, its proxy, PostgreSQL, toxiproxy
    for node in (1, 2, 3):
        listeners = properties(run(tmp_path, "kafka-cluster.sh", "config", str(node)).stdout)["listeners"]
        ports += [int(port) for port in re.findall(r":(\d+)", listeners)]
    for port in range(17001, 17007):
        conf = redis_conf(run(tmp_path, "redis-cluster.sh", "config", str(port)).stdout)
        ports += [int(conf["port"]), int(conf["cluster-port"])]
    return ports


def test_no_two_services_of_both_stacks_share_a_port(tmp_path):
    ports = stack_ports(tmp_path)
    assert len(ports) == len(set(ports)), sorted(ports)


def test_make_run_says_the_ports_the_processes_it_starts_really_use(tmp_path):
    """deploy/run.sh checks and prints the processor's and the deliverer's addresses from defaults of its
    own: they are the settings' defaults (what the processes bind), apart from each other and the stack."""
    from gateway.settings import Settings
    from processor.settings import ProcessorSettings

    defaults = dict(re.findall(r"\$\{(\w+):-([^}]*)\}", (ROOT / "deploy" / "run.sh").read_text()))
    gateway, processor = Settings(), ProcessorSettings()
    assert defaults["GATEWAY_OPS_PORT"] == str(gateway.ops_port)
    assert defaults["PROCESSOR_METRICS_HOST"] == processor.metrics_host
    assert defaults["PROCESSOR_METRICS_PORT"] == str(processor.metrics_port)
    assert defaults["PROCESSOR_DELIVER_METRICS_PORT"] == str(processor.deliver_metrics_port)
    served = [int(defaults["GATEWAY_PORT"]), gateway.ops_port, processor.metrics_port, processor.deliver_metrics_port]
    assert len(set(served)) == 4 and not set(served) & set(stack_ports(tmp_path)), served


def test_single_stack_env_is_what_it_always_was(tmp_path):
    done = run(tmp_path, "stack.sh", "env")
    assert done.stdout.splitlines() == [
        "GATEWAY_KAFKA_BOOTSTRAP=127.0.0.1:19092",
        "GATEWAY_REDIS_URL=redis://127.0.0.1:16379/0",
        "GATEWAY_DATABASE_URL=postgresql://settlement@127.0.0.1:15432/settlement",
    ]


def test_cluster_stack_env_names_every_node_and_replication_3(tmp_path):
    done = run(tmp_path, "stack.sh", "env", STACK="cluster")
    assert done.stdout.splitlines() == [
        "GATEWAY_KAFKA_BOOTSTRAP=127.0.0.1:19192,127.0.0.1:19193,127.0.0.1:19194",
        "GATEWAY_REDIS_URL=redis://127.0.0.1:17001,127.0.0.1:17002,127.0.0.1:17003",
        "GATEWAY_TOPIC_REPLICATION=3",
        "GATEWAY_DATABASE_SCHEMA=settlement_cluster",  # offsets of another Kafka: not the single stack's schema
        "GATEWAY_DATABASE_URL=postgresql://settlement@127.0.0.1:15432/settlement",
    ]
    moved = run(tmp_path, "stack.sh", "env", STACK="cluster", STACK_REDIS_CLUSTER_PORT="27101")
    assert "GATEWAY_REDIS_URL=redis://127.0.0.1:27101,127.0.0.1:27102,127.0.0.1:27103" in moved.stdout.splitlines()


def test_an_unknown_stack_and_make_test_on_the_cluster_are_refused(tmp_path):
    refused = run(tmp_path, "stack.sh", "env", STACK="triple")
    assert refused.returncode != 0 and "STACK must be single or cluster" in refused.stderr
    common = ROOT / "deploy" / "common.sh"
    guard = ["bash", "-c", f'. "{common}"; single_stack_only "make test"; echo passed']
    env = {**os.environ, "STACK": "cluster"}
    cluster = subprocess.run(guard, env=env, capture_output=True, text=True, timeout=30)
    assert cluster.returncode != 0 and "passed" not in cluster.stdout
    env["STACK"] = "single"
    assert subprocess.run(guard, env=env, capture_output=True, text=True, timeout=30).stdout == "passed\n"
