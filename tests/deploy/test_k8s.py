"""deploy/k8s rendered as `kubectl apply -k` would see it (tests/deploy/kustomize.py): the image override,
each storage-node pod's own TOML (node id, set and public URL from configuration, no shell), the example
overlay's registry and Ingress, and the one-shot Job that makes the first admin key."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from common.config import load_settings, require_node, require_query
from minicdn.cli.main import build_parser
from tests.deploy.kustomize import Doc, containers, kubectl_render, python_render, render, unhashed

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
PLACEHOLDER = "registry.example.com/minicdn:0.1.0"
GENERATED = {"minicdn-shared", "minicdn-query", "minicdn-nodes"}


def by_kind(docs: list[Doc]) -> dict[str, list[Doc]]:
    kinds: dict[str, list[Doc]] = {}
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
        kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


def config_map(kinds: dict[str, list[Doc]], name: str) -> dict[str, str]:
    data: dict[str, str] = next(
        c["data"] for c in kinds["ConfigMap"] if unhashed(c["metadata"]["name"], GENERATED) == name
    )
    return data


def pod_env(kinds: dict[str, list[Doc]], container: Doc) -> dict[str, str]:
    """The env a container gets from its envFrom (ConfigMaps and Secrets) and its literal env values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= config_map(kinds, unhashed(source["configMapRef"]["name"], GENERATED))
        else:
            secret = next(s for s in kinds["Secret"] if s["metadata"]["name"] == source["secretRef"]["name"])
            env |= {k: str(v) for k, v in secret["stringData"].items()}
    return env | {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}


def images(docs: list[Doc]) -> set[str]:
    return {c["image"] for d in docs for c in containers(d)}


def test_base_renders_with_the_placeholder_image_and_nothing_from_no_registry() -> None:
    docs = render(K8S / "base")
    assert images(docs) == {PLACEHOLDER}
    assert all(d["metadata"].get("namespace") == "minicdn" for d in docs if d["kind"] != "Namespace")


def test_every_storage_node_pod_reads_its_own_settings_from_configuration(tmp_path: Path) -> None:
    kinds = by_kind(render(K8S / "base"))
    nodes = config_map(kinds, "minicdn-nodes")
    statefulsets = kinds["StatefulSet"]
    assert len(statefulsets) == 3
    regions, pods = set(), set()
    for sts in statefulsets:
        spec = sts["spec"]
        assert spec["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
        assert spec["serviceName"] in {s["metadata"]["name"] for s in kinds["Service"]}
        container = spec["template"]["spec"]["containers"][0]
        assert "command" not in container  # the image's entrypoint `minicdn`: no shell string
        assert container["args"] == ["storage-node", "--config", "/etc/minicdn/nodes/$(POD_NAME).toml"]
        pod_name = next(e for e in container["env"] if e["name"] == "POD_NAME")
        assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        volume = next(v for v in spec["template"]["spec"]["volumes"] if "configMap" in v)
        assert unhashed(volume["configMap"]["name"], GENERATED) == "minicdn-nodes"
        mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
        assert mount["mountPath"] == "/etc/minicdn/nodes"
        env = pod_env(kinds, container)
        for ordinal in range(spec["replicas"]):
            pod = f"{sts['metadata']['name']}-{ordinal}"  # what Kubernetes expands $(POD_NAME) to
            assert f"{pod}.toml" in nodes, f"pod {pod} has no node file"
            toml = tmp_path / f"{pod}.toml"
            toml.write_text(nodes[f"{pod}.toml"])
            settings = load_settings(toml, env=env)
            require_node(settings)
            assert settings.node.node_id == pod
            assert settings.node.region == spec["template"]["spec"]["nodeSelector"]["topology.kubernetes.io/region"]
            assert settings.node.set_id == f"set-{ordinal + 1}"
            assert urlsplit(settings.node.base_url).hostname == f"{pod}.img.example.com"
            assert settings.nats.stream_replicas == 3 and len(settings.nats.url.split(",")) == 3
            regions.add(settings.node.region)
            pods.add(pod)
    assert regions == {"us-east", "eu-west", "ap-southeast"}
    assert {name.removesuffix(".toml") for name in nodes} == pods  # no file for a pod that does not exist


def test_query_service_settings(tmp_path: Path) -> None:
    kinds = by_kind(render(K8S / "base"))
    (deployment,) = kinds["Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["query-service", "--config", "/etc/minicdn/query.toml"]
    toml = tmp_path / "query.toml"
    toml.write_text(config_map(kinds, "minicdn-query")["query.toml"])
    require_query(load_settings(toml, env=pod_env(kinds, container)))


def test_the_example_overlay_sets_the_image_and_routes_every_public_name(tmp_path: Path) -> None:
    docs = render(K8S / "overlays/example")
    assert images(docs) == {"ghcr.io/your-org/minicdn:0.1.0"}
    kinds = by_kind(docs)
    (ingress,) = kinds["Ingress"]
    services = {s["metadata"]["name"]: s for s in kinds["Service"]}
    routes = {rule["host"]: rule["http"]["paths"][0]["backend"]["service"]["name"] for rule in ingress["spec"]["rules"]}
    tls_hosts = {h for t in ingress["spec"]["tls"] for h in t["hosts"]}
    for name, text in config_map(kinds, "minicdn-nodes").items():
        node_id = tomllib.loads(text)["node"]["node_id"]
        host = urlsplit(tomllib.loads(text)["node"]["base_url"]).hostname
        assert host in routes, f"{name}: no Ingress rule for {host}"
        selector = services[routes[host]]["spec"]["selector"]
        assert selector == {"statefulset.kubernetes.io/pod-name": node_id}  # that one pod
        assert host in tls_hosts or f"*.{host.split('.', 1)[1]}" in tls_hosts
    query_host = urlsplit(tomllib.loads(config_map(kinds, "minicdn-query")["query.toml"])["query"]["public_url"])
    assert routes[query_host.hostname or ""] == "minicdn-query" and query_host.hostname in tls_hosts


def test_the_bootstrap_job_makes_one_key_and_keeps_it_out_of_the_manifests() -> None:
    docs = render(K8S / "bootstrap")
    assert images(docs) == images(render(K8S / "base"))  # the same image as the running cluster
    (job,) = by_kind(docs)["Job"]
    spec = job["spec"]
    assert spec["backoffLimit"] == 0  # a retry would make a second key
    assert 0 < spec["ttlSecondsAfterFinished"] <= 3600  # the pod, and the key in its log, go away
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    args = build_parser().parse_args(container["args"])
    assert args.command == "bootstrap-key" and args.config is None  # MINICDN_DATABASE_URL from the Secret
    assert container["envFrom"] == [{"secretRef": {"name": "minicdn-secrets"}}]
    secret = next(d for d in render(K8S / "base") if d["kind"] == "Secret")
    assert "MINICDN_DATABASE_URL" in secret["stringData"]


def _shape(docs: list[Doc]) -> set[tuple[str, str, str]]:
    return {
        (d["kind"], unhashed(d["metadata"]["name"], GENERATED), ",".join(sorted(c["image"] for c in containers(d))))
        for d in docs
    }


@pytest.mark.parametrize("directory", ["base", "overlays/example", "bootstrap"])
def test_the_python_rendering_agrees_with_kubectl(directory: str) -> None:
    """The fallback used where kubectl is missing renders the same objects and images as kubectl does."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the Python rendering is what the other tests use")
    real, ours = kubectl_render(K8S / directory), python_render(K8S / directory)
    assert _shape(real) == _shape(ours)
    data: dict[str, Any] = {
        unhashed(d["metadata"]["name"], GENERATED): d["data"] for d in real if d["kind"] == "ConfigMap"
    }
    assert data == {d["metadata"]["name"]: d["data"] for d in ours if d["kind"] == "ConfigMap"}
