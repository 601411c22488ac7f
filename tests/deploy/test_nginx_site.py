"""`minicdn nginx-config --site` for the VM guide's node files (docs/deploy-vms.md, "Variants straight from disk"):
the server it writes for each node, with TLS as on the VMs and the guide's query-service server beside it, passes
`nginx -t`, and serves that node's published tree and passes the rest to that node's port."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from common.config import load_settings
from minicdn.cli.main import main
from tests.deploy.tools import need

VMS = Path(__file__).resolve().parents[2] / "deploy" / "vms"
NODES = sorted(VMS.glob("node-*.toml"))


def _secrets() -> dict[str, str]:
    lines = (VMS / "secrets.env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def test_the_site_of_every_vm_node_passes_nginx_t(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nginx = need("nginx")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=img.example.com", "-days", "1",
         "-keyout", str(tmp_path / "k.key"), "-out", str(tmp_path / "c.crt")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    # The guide's own file without its plain node server (the generated one takes its place), as the guide says.
    guide = (VMS / "nginx-minicdn.conf").read_text()
    guide = guide.replace("/etc/ssl/minicdn/img.example.com.crt", str(tmp_path / "c.crt"))
    guide = guide.replace("/etc/ssl/minicdn/img.example.com.key", str(tmp_path / "k.key"))
    query_only = guide[: guide.rindex("server {")].replace("upstream minicdn_node", "upstream minicdn_node_unused")
    assert len(NODES) == 3
    for node_file in NODES:
        settings = load_settings(node_file, env=_secrets())
        node_id = settings.node.node_id
        out = tmp_path / f"{node_id}.conf"
        argv = ["nginx-config", "--config", str(node_file), "--site", "--listen", "443 ssl http2"]
        argv += ["--server-name", f"{node_id}.img.example.com", "--tls-cert", str(tmp_path / "c.crt")]
        argv += ["--tls-key", str(tmp_path / "k.key"), "--out", str(out)]
        for name, value in _secrets().items():  # the database URL and signing keys a node file leaves to them
            monkeypatch.setenv(name, value)
        assert main(argv) == 0
        site = out.read_text()
        assert f"root {settings.node.data_dir}/published;" in site
        assert re.search(rf"server 127\.0\.0\.1:{settings.node.port};", site)
        (tmp_path / "site.conf").write_text(query_only + site)
        (tmp_path / "nginx.conf").write_text(
            f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{\n include {tmp_path}/site.conf;\n}}\n"
        )
        proc = subprocess.run(
            [nginx, "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)], capture_output=True, text=True
        )
        assert proc.returncode == 0 and "test is successful" in proc.stderr, (node_id, proc.stderr)
