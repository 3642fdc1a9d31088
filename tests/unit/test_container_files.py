"""Docker cannot run on the build machine, so the compose file and Dockerfile are checked by structure."""

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from psycopg.conninfo import conninfo_to_dict

from gateway.settings import PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
SETTING_NAMES = {PREFIX + name.upper() for name in Settings.__struct_fields__}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs with continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def test_compose_has_the_six_services_with_healthchecks():
    services = _compose()["services"]
    default = ("redis", "kafka", "postgres", "gateway", "processor", "webhooks")
    assert set(services) >= set(default)
    for name in default:
        assert services[name]["healthcheck"]["test"], f"{name} has no healthcheck"


def test_compose_redis_keeps_an_append_only_file():
    command = _compose()["services"]["redis"]["command"]
    assert "--appendonly" in command and command[command.index("--appendonly") + 1] == "yes"
    assert "6379:6379" in _compose()["services"]["redis"]["ports"]


def test_compose_redis_refuses_writes_when_full_rather_than_evict():
    """Full, Redis must fail closed (the gateway answers 503); an eviction policy would drop
    idempotency state silently. The stack's scripts start it the same way."""
    command = _compose()["services"]["redis"]["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert command[command.index("--maxmemory") + 1] == "${REDIS_MAXMEMORY:-2gb}"
    for script in ("redis.sh", "redis-cluster.sh"):
        text = (ROOT / "deploy" / script).read_text()
        assert "noeviction" in text and "STACK_REDIS_MAXMEMORY" in text, script


def test_compose_kafka_is_the_official_image_in_kraft_mode():
    kafka = _compose()["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:4.")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert not any("ZOOKEEPER" in key for key in env)
    assert "9092:9092" in kafka["ports"]
    # the gateway's bootstrap must be one of the advertised listeners
    gateway_bootstrap = _compose()["services"]["gateway"]["environment"]["GATEWAY_KAFKA_BOOTSTRAP"]
    assert gateway_bootstrap in env["KAFKA_ADVERTISED_LISTENERS"]


def test_compose_gateway_waits_for_healthy_dependencies_and_reads_real_settings():
    gateway = _compose()["services"]["gateway"]
    assert gateway["build"] == "."
    # open mode by default (no registry), and the operations port: published on the host's loopback only
    assert gateway["ports"] == ["127.0.0.1:8000:8000", "127.0.0.1:9101:9101"]
    assert "GATEWAY_PARTNERS_FILE" not in gateway["environment"]
    for dependency in ("redis", "kafka", "postgres"):
        assert gateway["depends_on"][dependency]["condition"] == "service_healthy"
    unknown = set(gateway["environment"]) - SETTING_NAMES
    assert not unknown, f"compose sets variables the gateway does not read: {unknown}"
    assert gateway["environment"]["GATEWAY_REDIS_URL"].startswith("redis://redis:")
    Settings.from_env({k: str(v) for k, v in gateway["environment"].items()})  # valid values too


def test_compose_gateway_operations_port_is_reachable_by_prometheus_and_published_on_loopback_only():
    """/metrics names every partner and its volumes: on the compose network (Prometheus scrapes it), on the
    host's loopback at most, and the health check asks it (plain HTTP, whatever the partners' port is)."""
    gateway = _compose()["services"]["gateway"]
    settings = Settings.from_env({k: str(v) for k, v in gateway["environment"].items()})
    assert settings.ops_host == "0.0.0.0" and settings.ops_port == 9101
    assert str(settings.ops_port) in gateway["expose"]
    published = [port for port in gateway["ports"] if port.rsplit(":", 1)[-1] == str(settings.ops_port)]
    assert published and all(port.startswith("127.0.0.1:") for port in published), published
    assert f"127.0.0.1:{settings.ops_port}/health" in " ".join(gateway["healthcheck"]["test"])


def test_compose_processor_runs_the_same_image_with_its_own_entry_point_and_real_settings():
    from processor.settings import VARIABLES, ProcessorSettings

    compose = _compose()
    processor = compose["services"]["processor"]
    assert processor["build"] == "." and processor["entrypoint"] == ["settlement-processor"]
    assert processor["restart"] == "unless-stopped"  # a crash resumes from the database's offsets
    for dependency in ("kafka", "postgres"):
        assert processor["depends_on"][dependency]["condition"] == "service_healthy"
    assert "9102/ready" in " ".join(processor["healthcheck"]["test"])
    unknown = set(processor["environment"]) - set(VARIABLES.values())
    assert not unknown, f"compose sets variables the processor does not read: {unknown}"
    settings = ProcessorSettings.from_env({k: str(v) for k, v in processor["environment"].items()})
    gateway = compose["services"]["gateway"]["environment"]
    assert settings.database_url == gateway["GATEWAY_DATABASE_URL"]  # both read and write one database
    assert settings.kafka_bootstrap == gateway["GATEWAY_KAFKA_BOOTSTRAP"]
    assert settings.metrics_host == "0.0.0.0"  # reachable from outside its container: Prometheus scrapes it
    # an operations port (DESIGN 13): published on the host's loopback only
    assert processor["ports"] == [f"127.0.0.1:{settings.metrics_port}:{settings.metrics_port}"]


def test_compose_webhooks_runs_the_deliverer_from_the_same_image_with_real_settings():
    from processor.settings import VARIABLES, ProcessorSettings

    compose = _compose()
    webhooks = compose["services"]["webhooks"]
    assert webhooks["build"] == "." and webhooks["entrypoint"] == ["settlement-processor"]
    assert webhooks["command"] == ["deliver"]
    assert webhooks["restart"] == "unless-stopped"  # a crash loses nothing: its claims lapse and are due again
    assert webhooks["depends_on"] == {"postgres": {"condition": "service_healthy"}}  # no Kafka: it reads the outbox
    unknown = set(webhooks["environment"]) - set(VARIABLES.values())
    assert not unknown, f"compose sets variables the deliverer does not read: {unknown}"
    settings = ProcessorSettings.from_env({k: str(v) for k, v in webhooks["environment"].items()})
    processor = ProcessorSettings.from_env(
        {k: str(v) for k, v in compose["services"]["processor"]["environment"].items()}
    )
    assert settings.database_url == processor.database_url  # the outbox the processor writes
    assert settings.database_schema == processor.database_schema
    assert settings.partners_file == processor.partners_file  # the same subscriptions (none by default)
    assert settings.metrics_host == "0.0.0.0"  # reachable from outside its container: Prometheus scrapes it
    port = settings.deliver_metrics_port
    assert port == 9103 and port != processor.metrics_port
    assert str(port) in webhooks["expose"]
    # an operations port (its metrics name every subscribed partner): published on the host's loopback only
    assert webhooks["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert f"127.0.0.1:{port}/ready" in " ".join(webhooks["healthcheck"]["test"])


def test_compose_postgres_is_the_official_image_with_its_data_in_a_volume():
    compose = _compose()
    postgres = compose["services"]["postgres"]
    image, _, tag = postgres["image"].partition(":")
    major = int(tag.split(".")[0].split("-")[0])
    assert image == "postgres" and major >= 15
    assert "5432:5432" in postgres["ports"]
    volume, path = postgres["volumes"][0].split(":")[:2]
    # the official image keeps its cluster in /var/lib/postgresql/data up to 17, in /var/lib/postgresql from 18
    assert volume in compose["volumes"] and path == (
        "/var/lib/postgresql" if major >= 18 else "/var/lib/postgresql/data"
    )
    assert not any(flag.replace(" ", "") in ("fsync=off", "synchronous_commit=off") for flag in postgres["command"])
    env = postgres["environment"]
    healthcheck = postgres["healthcheck"]["test"]
    assert healthcheck[:2] == ["CMD", "pg_isready"]
    assert healthcheck[healthcheck.index("-U") + 1] == env["POSTGRES_USER"]
    assert healthcheck[healthcheck.index("-d") + 1] == env["POSTGRES_DB"]
    # the gateway logs in to this service as its user, to its database
    url = conninfo_to_dict(compose["services"]["gateway"]["environment"]["GATEWAY_DATABASE_URL"])
    assert (url["host"], url["port"]) == ("postgres", "5432")
    assert (url["user"], url["password"], url["dbname"]) == (
        env["POSTGRES_USER"],
        env["POSTGRES_PASSWORD"],
        env["POSTGRES_DB"],
    )


def test_dockerfile_is_multi_stage_and_compiles_in_the_build_stage():
    instructions = _dockerfile()
    stages = [args for op, args in instructions if op == "FROM"]
    assert len(stages) >= 2 and stages[0].endswith(" AS build") and "slim" in stages[-1]
    runtime_start = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    build_part = instructions[:runtime_start]
    assert any(op == "RUN" and "pip wheel" in args for op, args in build_part)
    assert any(op == "RUN" and "gcc" in args for op, args in build_part)
    runtime = instructions[runtime_start:]
    assert not any(op == "RUN" and "gcc" in args for op, args in runtime), "no compiler in the runtime image"


def test_dockerfile_build_stage_copies_every_package_the_wheel_holds():
    """The wheel is built from what the build stage copies: every package pyproject.toml includes
    (the settlement core, the gateway, the processor the compose file runs from the same image, fastcore)
    must be there, or the image starts without it."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {name.rstrip("*") for name in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages == {"settlement", "gateway", "processor", "fastcore"}
    copied = {args.split()[0] for op, args in _dockerfile() if op == "COPY" and not args.startswith("--from")}
    assert packages <= copied, f"the build stage does not copy {sorted(packages - copied)}"


def _entrypoint_and_command() -> tuple[list[str], list[str]]:
    runtime = _dockerfile()
    entrypoint = [args for op, args in runtime if op == "ENTRYPOINT"][-1]
    command = [args for op, args in runtime if op == "CMD"][-1]
    return yaml.safe_load(entrypoint), yaml.safe_load(command)


def run_entrypoint(tmp_path: Path, env: dict[str, str], check_status: int = 0) -> tuple[int, list[str] | None]:
    """The image's ENTRYPOINT and CMD, run by this machine's sh with stand-ins for `python` (its `gateway
    check` exits `check_status`; `gateway serve` is the real launcher) and `granian` (it writes down its
    arguments): the exit status, and Granian's arguments or None when it was not started."""
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    written = tmp_path / "granian-arguments"
    # `python -m gateway check` is a stand-in; `python -m gateway serve` is this interpreter's launcher
    python = f'[ "$*" = "-m gateway check" ] && exit {check_status}\n[ "$1 $2 $3" = "-m gateway serve" ] || exit 99\n'
    (stand_ins / "python").write_text(f'#!/bin/sh\n{python}exec {sys.executable} "$@"\n')
    (stand_ins / "granian").write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > {written}\n')
    for stand_in in stand_ins.iterdir():
        stand_in.chmod(0o755)
    entrypoint, command = _entrypoint_and_command()
    run = subprocess.run([*entrypoint, *command], env={"PATH": f"{stand_ins}:/usr/bin:/bin", **env}, timeout=30)
    return run.returncode, written.read_text().splitlines() if written.exists() else None


def test_dockerfile_runtime_is_non_root_granian_with_healthcheck(tmp_path):
    runtime = _dockerfile()
    users = [args for op, args in runtime if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    status, argv = run_entrypoint(tmp_path, {})
    assert status == 0 and argv is not None
    assert "asgi" in argv and "gateway.api.app:create_app" in argv and "--factory" in argv
    assert argv[argv.index("--port") + 1] == "8000"
    assert argv[argv.index("--workers") + 1] == "2", "CMD's --workers"
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert not any(arg.startswith("--ssl") for arg in argv)
    exposed = {port for op, args in runtime if op == "EXPOSE" for port in args.split()}
    assert exposed == {"8000", str(Settings().ops_port)}
    healthcheck = [args for op, args in runtime if op == "HEALTHCHECK"][-1]
    assert "/health" in healthcheck and "GATEWAY_OPS_PORT" in healthcheck and str(Settings().ops_port) in healthcheck
    env_names = {token.split("=", 1)[0] for op, args in runtime if op == "ENV" for token in shlex.split(args)}
    assert env_names - {"PYTHONUNBUFFERED", "PROMETHEUS_MULTIPROC_DIR"} <= SETTING_NAMES
    assert "--workers-kill-timeout" in argv, "a bounded graceful shutdown"
    assert "--respawn-failed-workers" in argv, "a worker that dies is replaced"


def test_dockerfile_serves_https_when_given_a_certificate_and_its_key(tmp_path):
    certificate, key = "/run/secrets/gateway certificate.pem", "/run/secrets/gateway.key"
    status, argv = run_entrypoint(tmp_path, {"GATEWAY_TLS_CERT_FILE": certificate, "GATEWAY_TLS_KEY_FILE": key})
    assert status == 0 and argv is not None
    assert argv[argv.index("--ssl-certificate") + 1] == certificate  # one argument, spaces and all
    assert argv[argv.index("--ssl-keyfile") + 1] == key
    assert argv[argv.index("--workers") + 1] == "2"


def test_dockerfile_starts_no_granian_when_gateway_check_refuses_the_settings(tmp_path):
    status, argv = run_entrypoint(tmp_path, {"GATEWAY_TLS_CERT_FILE": "/run/secrets/only-the-certificate.pem"}, 2)
    assert status == 2 and argv is None


def test_observability_profile_scrapes_the_gateway_and_provisions_the_dashboard():
    services = _compose()["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"]
    scrape = yaml.safe_load((ROOT / "deploy/observability/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    gateway = jobs["settlement-gateway"]
    # the operations port of the compose file's gateway, never the partners' port
    environment = {k: str(v) for k, v in services["gateway"]["environment"].items()}
    ops_port = Settings.from_env(environment).ops_port
    assert gateway["metrics_path"] == "/metrics" and gateway["static_configs"][0]["targets"] == [f"gateway:{ops_port}"]
    mounted = {volume.split(":")[0] for volume in services["grafana"]["volumes"]}
    assert {"./deploy/observability/grafana/provisioning", "./deploy/observability/grafana/dashboards"} <= mounted
    for volume in services["grafana"]["volumes"] + services["prometheus"]["volumes"]:
        assert (ROOT / volume.split(":")[0]).exists(), volume


def test_observability_profile_scrapes_the_processor_and_loads_its_alert_rules():
    from processor.settings import ProcessorSettings

    services = _compose()["services"]
    prometheus = services["prometheus"]
    scrape = yaml.safe_load((ROOT / "deploy/observability/prometheus.yml").read_text())
    [job] = [job for job in scrape["scrape_configs"] if job["job_name"] == "settlement-processor"]
    processor = services["processor"]
    port = ProcessorSettings.from_env({k: str(v) for k, v in processor["environment"].items()}).metrics_port
    # the processor's service name and metrics port on the compose network, the port exposed there
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == [f"processor:{port}"]
    assert str(port) in processor["expose"]
    assert "processor" in prometheus["depends_on"]
    # every rule file, relative to the configuration, is mounted beside it in the container
    config_dir = next(
        Path(volume.split(":")[1]).parent
        for volume in prometheus["volumes"]
        if volume.split(":")[0] == "./deploy/observability/prometheus.yml"
    )
    assert f"--config.file={config_dir / 'prometheus.yml'}" in prometheus["command"]
    mounts = {volume.split(":")[0]: volume.split(":")[1:] for volume in prometheus["volumes"]}
    assert scrape["rule_files"] == ["alerts.yml"]
    for name in scrape["rule_files"]:
        assert mounts[f"./deploy/observability/{name}"] == [str(config_dir / name), "ro"], name
        assert (ROOT / "deploy/observability" / name).is_file(), name


def test_observability_profile_scrapes_the_webhook_deliverer():
    from processor.settings import ProcessorSettings

    services = _compose()["services"]
    scrape = yaml.safe_load((ROOT / "deploy/observability/prometheus.yml").read_text())
    [job] = [job for job in scrape["scrape_configs"] if job["job_name"] == "settlement-webhooks"]
    webhooks = services["webhooks"]
    port = ProcessorSettings.from_env({k: str(v) for k, v in webhooks["environment"].items()}).deliver_metrics_port
    # the deliverer's service name and metrics port on the compose network, the port exposed there
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == [f"webhooks:{port}"]
    assert str(port) in webhooks["expose"]
    assert "webhooks" in services["prometheus"]["depends_on"]


def _exported(registry) -> set[str]:
    """The sample names a registry's metrics are scraped as."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    return {metric.name + suffix for metric in registry.collect() for suffix in suffixes[metric.type]}


def _dashboard_metrics() -> set[str]:
    import json

    dashboard = json.loads((ROOT / "deploy/observability/grafana/dashboards/settlement-gateway.json").read_text())
    return {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])  # a row has none
        for name in re.findall(r"\b(settlement_\w+|http_server_\w+)", target["expr"])
    }


def test_dashboard_queries_only_metrics_the_gateway_the_processor_and_the_deliverer_export():
    from gateway.telemetry.metrics import Metrics
    from processor.metrics import ProcessorMetrics
    from processor.webhooks.metrics import DeliveryMetrics

    gateway = _exported(Metrics().registry)
    processor = _exported(ProcessorMetrics().registry)
    deliverer = _exported(DeliveryMetrics().registry)
    names = _dashboard_metrics()
    assert names <= gateway | processor | deliverer, names - (gateway | processor | deliverer)
    assert names & gateway and names & processor and names & deliverer, "a gateway part, a processor and a webhook row"


def test_dashboard_shows_every_processor_and_deliverer_metric_the_alerts_read():
    rules = yaml.safe_load((ROOT / "deploy/observability/alerts.yml").read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    for prefix in ("settlement_processor_", "settlement_webhook_"):
        read = {name for expr in expressions for name in re.findall(rf"\b{prefix}\w+", expr)}
        assert read and read <= _dashboard_metrics(), read - _dashboard_metrics()


def _profile(name: str) -> dict:
    return {key: service for key, service in _compose()["services"].items() if name in service.get("profiles", [])}


def test_cluster_profile_leaves_the_default_services_as_they_are():
    services = _compose()["services"]
    assert {name for name, service in services.items() if "profiles" not in service} == {
        "redis",
        "kafka",
        "postgres",
        "gateway",
        "processor",
        "webhooks",
    }
    assert services["gateway"]["environment"]["GATEWAY_KAFKA_BOOTSTRAP"] == "kafka:19092"


def test_cluster_profile_kafka_is_three_kraft_nodes_with_replication_3_and_min_isr_2():
    compose = _compose()
    nodes = {
        name: service for name, service in _profile("cluster").items() if service["image"].startswith("apache/kafka:4.")
    }
    assert sorted(nodes) == ["kafka-1", "kafka-2", "kafka-3"]
    environments = [service["environment"] for service in nodes.values()]
    assert len({env["CLUSTER_ID"] for env in environments}) == 1, "one cluster id formatted into every node"
    [voters] = {env["KAFKA_CONTROLLER_QUORUM_VOTERS"] for env in environments}
    voter_addresses = dict(voter.split("@") for voter in voters.split(","))
    assert len(voter_addresses) == 3
    published = set()
    for name, service in nodes.items():
        env = service["environment"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        host, controller_port = voter_addresses[str(env["KAFKA_NODE_ID"])].split(":")
        assert host == name and f"CONTROLLER://:{controller_port}" in env["KAFKA_LISTENERS"]
        assert f"INTERNAL://{name}:19092" in env["KAFKA_ADVERTISED_LISTENERS"]
        settings = {
            "KAFKA_DEFAULT_REPLICATION_FACTOR": "3",
            "KAFKA_MIN_INSYNC_REPLICAS": "2",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "3",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "3",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "2",
            "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "3",
            "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "2",
            "KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE": "false",
            "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
        }
        assert {key: str(env[key]) for key in settings} == settings
        volume, path = service["volumes"][0].split(":")[:2]
        assert volume in compose["volumes"] and path == env["KAFKA_LOG_DIRS"]
        assert "localhost:19092" in " ".join(service["healthcheck"]["test"])
        [port] = service["ports"]
        assert f"EXTERNAL://localhost:{port.split(':')[0]}" in env["KAFKA_ADVERTISED_LISTENERS"]
        published.add(port)
    assert len(published) == 3


def test_cluster_profile_redis_is_six_cluster_nodes_and_a_one_shot_create():
    profile = _profile("cluster")
    nodes = {name: service for name, service in profile.items() if name.startswith("redis-node-")}
    assert len(nodes) == 6
    for name, service in nodes.items():
        assert service["image"].startswith("redis:7.")
        command = " ".join(service["command"])
        for setting in (
            "redis-server",
            "--cluster-enabled yes",
            "--cluster-node-timeout 2000",
            "--appendonly yes",
            "--appendfsync everysec",
            "--maxmemory-policy noeviction",
        ):
            assert setting in command, (name, setting)
        assert service["hostname"] == name  # announced to clients: --cluster-announce-hostname
        assert service["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    create = profile["redis-cluster-create"]
    assert create["restart"] == "no"
    assert create["depends_on"] == {name: {"condition": "service_healthy"} for name in nodes}
    script = " ".join(create["command"])
    assert "redis-cli --cluster create" in script and "--cluster-replicas 1" in script and "--cluster-yes" in script
    assert all(name in script for name in nodes)
    assert "cluster_slots_assigned:16384" in script, "a cluster that exists is not created again"
