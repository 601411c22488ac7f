"""deploy/ validated: Compose (`docker compose config`, client only), Prometheus (`promtool check
config|rules`, and `promtool test rules` on the alert unit tests), every YAML parsed, systemd files
checked against the real CLI and settings, and every metric named in the alert rules and the Grafana
dashboard found on a live cluster's /metrics. Kubernetes: test_k8s.py; plain VMs: test_vms.py."""

from __future__ import annotations

import argparse
import configparser
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import yaml

from common.config import iter_keys, load_settings, require_node, require_query
from minicdn.cli.main import build_parser
from tests.cluster import TestCluster, make_jpeg
from tests.deploy.tools import need
from tests.integration.test_metrics import scrape

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))
METRIC_NAME = re.compile(r"\bminicdn_[a-z0-9_]+\b")
ENV_NAME = re.compile(r"\bMINICDN_[A-Z0-9_]+\b")


def run(*args: str, cwd: Path = DEPLOY) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def test_every_yaml_file_parses() -> None:
    assert len(YAML_FILES) >= 10
    for path in YAML_FILES:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, path


def compose_command() -> list[str]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return [need("docker-compose")]  # Debian's package: the same `config` validation, no engine needed


def test_compose_file_is_valid_and_complete() -> None:
    out = run(*compose_command(), "-f", "docker-compose.yml", "config")
    config = yaml.safe_load(out)
    services = config["services"]
    nodes = [s for s in services.values() if s.get("command") == ["storage-node"]]
    queries = [s for s in services.values() if s.get("command") == ["query-service"]]
    assert len(nodes) == 3 and len(queries) == 2
    assert {n["environment"]["MINICDN_NODE_REGION"] for n in nodes} == {"us-east", "eu-west", "ap-southeast"}
    assert {"postgres", "nats1", "nats2", "nats3", "prometheus", "grafana"} <= set(services)
    for name in ("nats1", "nats2", "nats3"):
        assert "-js" in services[name]["command"] and "--cluster_name" in services[name]["command"]
    for service in nodes + queries:  # every minicdn env var is a real setting with a valid value
        settings = load_settings(env={k: str(v) for k, v in service["environment"].items()})
        (require_node if service in nodes else require_query)(settings)
    # nginx in front of us-east-1: its server written from the node's very settings, the node's URLs on nginx's
    # port, the node's volume (its published tree) read-only.
    node = load_settings(env={k: str(v) for k, v in services["node-us-east"]["environment"].items()}).node
    writer = services["nginx-config-us-east"]
    assert writer["command"][0] == "nginx-config" and writer["environment"] == services["node-us-east"]["environment"]
    assert node.published_tree and node.base_url == "http://localhost:8181" and node.port == 8081
    nginx = services["nginx-us-east"]
    assert nginx["network_mode"] == "service:edge" and "nginx-config-us-east" in nginx["depends_on"]
    # (compose v2 prints long volume syntax, docker-compose 1.29 the short one)
    assert any(
        v.endswith(":/srv/minicdn:ro") if isinstance(v, str) else v["target"] == "/srv/minicdn" and v.get("read_only")
        for v in nginx["volumes"]
    )


def test_prometheus_config_and_rules() -> None:
    promtool = need("promtool")
    run(promtool, "check", "config", "prometheus/prometheus.yml")
    out = run(promtool, "check", "rules", "prometheus/alerts.yml")
    assert "SUCCESS" in out
    assert "SUCCESS" in run(promtool, "test", "rules", "prometheus/alerts.test.yml")
    alerts = {
        r["alert"] for g in yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())["groups"] for r in g["rules"]
    }
    for wanted in (
        "MinicdnNodeDown",
        "MinicdnDiskUsageHigh",
        "MinicdnDiskUsageCritical",
        "MinicdnDiskFullWithin7Days",
        "MinicdnReplicationLagHigh",
        "MinicdnUnderReplicatedImages",
        "MinicdnHigh5xxRate",
        "MinicdnJetStreamBacklog",
    ):
        assert wanted in alerts


def _grafana_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/minicdn.json").read_text())
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "prometheus"
            exprs.append(target["expr"])
    return exprs


def _rule_exprs() -> list[str]:
    groups = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def test_grafana_is_provisioned_with_the_dashboard() -> None:
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "prometheus"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/minicdn.yml").read_text())
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in mounts
    assert len(_grafana_exprs()) >= 20


async def test_every_metric_in_rules_and_dashboard_is_exported(cluster: TestCluster) -> None:
    """Scrape a live cluster after an upload, its replication, a variant read and a rejection."""
    assert cluster.session is not None
    image = await cluster.upload(make_jpeg(300, 200, seed=11))
    await cluster.wait_replicated(image["image_id"])
    await cluster.wait_ready(image["image_id"])
    node = cluster.node_settings[image["node_id"]].node.base_url
    async with cluster.session.get(f"{node}/i/{image['image_id']}/w150.jpg") as resp:
        assert resp.status == 200
    status, _ = await cluster.put(image["upload_url"], b"again")
    assert status in (403, 409)  # used URL: a rejection, so the rejection counter has a sample

    async def consumer_gauges() -> bool:
        scraped = await scrape(cluster.session, node)  # type: ignore[arg-type]
        return "minicdn_jetstream_consumer_pending_messages" in scraped

    await cluster.wait_for(consumer_gauges, "the replicators' consumer gauges")
    exported: set[str] = set()
    for url in [cluster.query_url, *(s.node.base_url for s in cluster.node_settings.values())]:
        exported |= set(await scrape(cluster.session, url))
    named = {m for expr in _rule_exprs() + _grafana_exprs() for m in METRIC_NAME.findall(expr)}
    assert len(named) >= 20
    missing = sorted(named - exported)
    assert missing == [], f"named in deploy/ but not exported: {missing}"


def test_every_env_var_in_deploy_files_is_a_setting() -> None:
    known = {f"MINICDN_{section}_{key}".upper() for section, key, _h, _d in iter_keys()}
    used: set[str] = set()
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            used |= set(ENV_NAME.findall(path.read_text()))
    assert used, "deploy files name settings through env vars"
    assert sorted(used - known) == []


def test_systemd_units_and_example_configs() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    commands = set(sub.choices)
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    assert len(units) >= 2
    for unit in units:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read_string(unit.read_text())
        assert {"Unit", "Service", "Install"} <= set(parser.sections()), unit
        argv = shlex.split(parser["Service"]["ExecStart"])
        assert argv[0].endswith("/minicdn") and argv[1] in commands and argv[2] == "--config", unit
        assert parser["Service"]["User"] == "minicdn"
    require_node(load_settings(DEPLOY / "systemd/node.example.toml", env={}))
    require_query(load_settings(DEPLOY / "systemd/query.example.toml", env={}))


def test_dockerfile_copies_what_exists() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    ignored = [p for p in (DEPLOY.parent / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]
    copied = [src for line in text.splitlines() if line.startswith("COPY ") for src in line.split()[1:-1]]
    for src in copied:
        assert (DEPLOY.parent / src).exists(), src
        assert not any(fnmatch.fnmatch(src, pattern) for pattern in ignored), f"{src} is in .dockerignore"
    # Every package the wheel is built from (pyproject's packages.find) is copied into the image.
    pyproject = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= set(copied)
    assert 'ENTRYPOINT ["minicdn"]' in text and "USER minicdn" in text
