"""nginx for `minicdn bench --peers`: Debian's nginx (when installed) serving one file from a temp root, with a
minimal config of our own: one worker, loopback only, and every path it writes (pid, error log, temp
directories) in the temp dir, so no root privileges and no system config are involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from common.procs import die_with_parent, free_port


def nginx_binary() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")  # sbin: not on every PATH


def config(root: Path, port: int) -> str:
    # Run by root, nginx would start its worker as `nobody`, which cannot read our private temp dir: keep the
    # identity that started it, as every other server of the bench does.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"  {kind}_temp_path {root / 'tmp' / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}daemon off;
worker_processes 1;
pid {root / "nginx.pid"};
error_log {root / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
{temp}
  types {{ image/jpeg jpg; image/webp webp; }}
  sendfile on;
  tcp_nopush on;
  # The other servers keep a connection open for any number of requests; nginx's default closes one
  # every 1,000, which would make it reconnect where the others do not.
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    root {root / "www"};
  }}
}}
"""


@dataclass(frozen=True)
class Nginx:
    base_url: str
    pid: int  # the master; its worker is its child


@contextlib.asynccontextmanager
async def nginx_serving(
    root: Path, name: str, body: bytes, session: aiohttp.ClientSession
) -> AsyncIterator[Nginx | None]:
    """nginx serving ``body`` at ``/<name>``; None when nginx is not installed."""
    exe = nginx_binary()
    if exe is None:
        yield None
        return
    for sub in ("www", "tmp"):
        (root / sub).mkdir(parents=True)
    (root / "www" / name).write_bytes(body)
    port = free_port()
    (root / "nginx.conf").write_text(config(root, port))
    proc = _spawn(exe, root)
    try:
        url = f"http://127.0.0.1:{port}"
        await _wait_serving(session, f"{url}/{name}", proc, root)
        yield Nginx(url, proc.pid)
    finally:
        await asyncio.to_thread(_stop, proc)


def _spawn(exe: str, root: Path, *options: str) -> subprocess.Popen[bytes]:
    with (root / "stderr.log").open("wb") as out:
        return subprocess.Popen(
            [exe, "-p", str(root), "-c", str(root / "nginx.conf"), "-e", str(root / "error.log"), *options],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its worker too is stopped with the group
            preexec_fn=die_with_parent,
        )


async def _wait_serving(session: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes], root: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)
    log = "".join(p.read_text(errors="replace") for p in (root / "stderr.log", root / "error.log") if p.exists())
    raise RuntimeError(f"nginx did not serve {url}: {log.strip()[-1000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)  # fast shutdown of the master and its worker
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # The worker is in the same process group: wait until it is gone too.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def nginx_in_front(
    root: Path, node_config: Path, path: str, session: aiohttp.ClientSession
) -> AsyncIterator[Nginx | str]:
    """nginx (one worker) in front of the node whose config file is ``node_config``, configured by ``minicdn
    nginx-config``, once it sends ``path`` (a public variant) from the node's published tree; else why not."""
    from common.config import load_settings
    from minicdn.nginx_config import render

    exe = nginx_binary()
    if exe is None:
        yield "nginx is not installed"
        return
    settings = load_settings(str(node_config))
    if not settings.node.published_tree:
        yield f"{settings.node.node_id} keeps no published tree (node.published_tree = false)"
        return
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (root / "tmp" / kind).mkdir(parents=True)
    port = free_port()
    (root / "nginx.conf").write_text(render(settings, listen=f"127.0.0.1:{port}", workers="1", run_dir=root))
    proc = _spawn(exe, root, "-g", "daemon off;")  # in the foreground, as ours (the config is a production one)
    try:
        url = f"http://127.0.0.1:{port}"
        await _wait_serving(session, f"{url}{path}", proc, root)  # through the node, which links it
        await _wait_from_disk(session, f"{url}{path}", root)
        yield Nginx(url, proc.pid)
    finally:
        await asyncio.to_thread(_stop, proc)


async def _wait_from_disk(session: aiohttp.ClientSession, url: str, root: Path) -> None:
    """Until nginx answers ``url`` itself: a node's answer carries its X-Request-Id, nginx's own does not."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        async with session.get(url) as resp:
            await resp.read()
            if resp.status == 200 and "X-Request-Id" not in resp.headers:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"nginx in front never sent {url} from the published tree (see {root / 'error.log'})")
