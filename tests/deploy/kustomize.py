"""Render a kustomization of deploy/k8s: with `kubectl kustomize` when kubectl is installed, else with a
small Python rendering of the features those files use (resources, namespace, images, configMapGenerator
with files and envs; names keep no hash suffix). The tests compare the two where both can run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]


def kubectl_render(directory: Path) -> list[Doc]:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None
    proc = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def python_render(directory: Path) -> list[Doc]:
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[Doc] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        docs += python_render(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for gen in spec.get("configMapGenerator", []):
        data: dict[str, str] = {}
        for item in gen.get("files", []):
            key, _, rel = item.rpartition("=")
            data[key or Path(rel).name] = (directory / rel).read_text()
        for rel in gen.get("envs", []):
            for line in (directory / rel).read_text().splitlines():
                if line.strip() and not line.startswith("#"):
                    name, _, value = line.partition("=")
                    data[name] = value
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    for doc in docs:
        if spec.get("namespace") and doc["kind"] != "Namespace":
            doc["metadata"]["namespace"] = spec["namespace"]
        for container in containers(doc):
            for image in spec.get("images", []):
                if container["image"].split(":")[0] == image["name"]:
                    container["image"] = f"{image['newName']}:{image['newTag']}"
    return docs


def render(directory: Path) -> list[Doc]:
    return kubectl_render(directory) if shutil.which("kubectl") else python_render(directory)


def containers(doc: Doc) -> list[Doc]:
    """The containers of a Deployment, StatefulSet or Job (none for other kinds)."""
    if doc["kind"] not in ("Deployment", "StatefulSet", "Job"):
        return []
    result: list[Doc] = doc["spec"]["template"]["spec"]["containers"]
    return result


def unhashed(name: str, generated: set[str]) -> str:
    """A generated ConfigMap's name without kustomize's hash suffix."""
    return next((g for g in generated if name.startswith(f"{g}-") or name == g), name)
