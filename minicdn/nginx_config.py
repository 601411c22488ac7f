"""An nginx configuration, from a node's settings, for nginx in front of that node (`minicdn nginx-config`, the bench).

nginx sends straight from disk what the node published (``node.published_tree``: hard links under
``<data_dir>/published/<id[:2]>/<id>/<variant>`` to the variants anyone may be sent unsigned: ready, public, no
hotlink allowlist; ``storage_node.objects.published``) and passes everything else to the node: a miss (the node
answers and publishes it), a request with a query string (signed URLs), ``auto`` variants (negotiated from Accept by
the node, with ``Vary: Accept``), originals, uploads, peer copies, ``/healthz`` and ``/metrics``.

nginx's headers for a published file are the node's: the same Cache-Control, nosniff and CSP, the Content-Type of
the extension, no Last-Modified, and the same ETag (nginx derives it from mtime and size; the node gives every
variant a deterministic mtime and uses the same formula). No ``open_file_cache``: on Linux a cached descriptor
would keep sending an unpublished (deleted) image until it is revalidated.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from common.config import Settings, require_node
from common.hardening import IMAGE_CSP
from common.ids import IMAGE_ID_LENGTH
from common.variants import FORMATS

CACHE_PUBLIC = "public, max-age=31536000, immutable"  # storage_node.handlers_read's, for a public variant
# A variant name that may be published: every named format (never ``auto``) and shape (common.variants).
_VARIANT = r"(?:w\d+|\d+x\d+|fit\d+x\d+|thumb|full)\.(?:" + "|".join(sorted(FORMATS)) + ")"
_ID_CHARS = "[a-z2-7]"
_PROXY = (
    "proxy_pass http://minicdn_node;",
    "proxy_http_version 1.1;",
    'proxy_set_header Connection "";',  # keep-alive to the node
    "proxy_set_header Host $http_host;",
    # The node takes the client's address from here only when nginx's is in `http.trusted_proxies`.
    "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
    "proxy_set_header X-Forwarded-Proto $scheme;",
    "proxy_request_buffering off;",  # uploads stream to the node, which checks size and type as they come
    "proxy_buffering off;",  # originals and misses stream from the node; nothing is written to nginx's disk
    "proxy_redirect off;",  # a 307 to another holder stays as the node wrote it
)


def render(
    settings: Settings, *, listen: str = "80", workers: str = "auto", run_dir: Path | None = None, access_log: str = ""
) -> str:
    """A whole nginx.conf for the node of ``settings``."""
    main, temps = "", ""
    if run_dir is not None:
        # Run by root with a private run dir, nginx's workers would start as `nobody` and read nothing of ours.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
        main = f"{user}pid {run_dir / 'nginx.pid'};\nerror_log {run_dir / 'error.log'} warn;\n"
        temps = "".join(
            f"{kind}_temp_path {run_dir / 'tmp' / kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
    body = temps + site(settings, listen=f"{listen} reuseport", access_log=access_log)
    return f"""worker_processes {workers};
{main}events {{ worker_connections 4096; }}

http {{
{_indent(body, "  ")}}}
"""


def site(
    settings: Settings,
    *,
    listen: str = "80",
    server_name: str = "",
    tls: tuple[str, str] = ("", ""),
    access_log: str = "",
) -> str:
    """The node's part of an nginx ``http {}`` block (a file for ``conf.d/``): the map, the upstream and the server.
    ``listen`` may carry flags (``443 ssl http2``); ``tls`` is the certificate and key files, when nginx terminates
    TLS."""
    require_node(settings)
    node = settings.node
    published = Path(node.data_dir).absolute() / "published"
    upstream_host = "127.0.0.1" if node.host in ("", "0.0.0.0", "::") else node.host
    log = f"access_log {access_log} combined buffer=64k flush=5s;" if access_log else "access_log off;"
    names = f"\n    server_name {server_name};" if server_name else ""
    certs = f"\n    ssl_certificate {tls[0]};\n    ssl_certificate_key {tls[1]};" if tls[0] and tls[1] else ""
    types = " ".join(f"{ctype} {ext};" for ext, ctype in sorted(FORMATS.items()))
    proxy = "".join(f"      {line}\n" for line in _PROXY)
    rest = f"{_ID_CHARS}{{{IMAGE_ID_LENGTH - 2}}}"
    image = rf"^/i/(?<mc_aa>{_ID_CHARS}{{2}})(?<mc_id_rest>{rest})/(?<mc_variant>{_VARIANT})$"
    return f"""# Written by `minicdn nginx-config` for node {node.node_id} ({node.region}); regenerate rather than edit.
# Serves {published} (the node's published variants) from disk, passes everything else to the node.

# Only a GET or HEAD without a query string may be a published file: a signed URL (exp, kid, sig) goes to the node.
map "$request_method?$args" $minicdn_published {{
  "GET?" "";
  "HEAD?" "";
  default "/-";
}}

upstream minicdn_node {{
  server {upstream_host}:{node.port};
  keepalive 64;
}}

server {{
    listen {listen};{names}{certs}
    root {published};
    {log}
    server_tokens off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 100000;
    client_max_body_size {settings.limits.max_upload_bytes};
    etag on;
    max_ranges 1;  # several ranges get the whole file, as from the node (no range amplification)

    location ~ "{image}" {{
      types {{ {types} }}
      default_type application/octet-stream;
      add_header Cache-Control "{CACHE_PUBLIC}";
      add_header X-Content-Type-Options nosniff;
      add_header Content-Security-Policy "{IMAGE_CSP}";
      add_header Last-Modified "";  # mtimes are not times here (the node sends none)
      try_files $minicdn_published/$mc_aa/$mc_aa$mc_id_rest/$mc_variant @node;
    }}

    location / {{
{proxy}    }}

    location @node {{
{proxy}    }}
}}
"""


def _indent(text: str, prefix: str) -> str:
    return "".join(prefix + line if line.strip() else line for line in text.splitlines(keepends=True))
