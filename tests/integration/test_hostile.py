"""The hostile-request catalogue: forged, replayed, expired, oversized, malformed, spoofed and slow
requests against the query service and the storage nodes of one real cluster.

Each case asserts the HTTP status, the docs/api.md error code, and that nothing was written: no file under
any node's data directory (objects/ or tmp/) and no row changed in any table but `nodes` (images,
replicas, audit_log, api_keys, apps, and whatever the other migrations add). Cases refused at the
connection level (slowloris, a hang-up) assert the closed connection instead of a status, and those
refused by aiohttp's HTTP parser before any handler runs get its plain-text 400 (no JSON code).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from common import signing
from common.db.pool import open_pool
from minicdn.embedded import EmbeddedNats, EmbeddedPostgres
from tests import hostile as hostile_files
from tests.cluster import TestCluster, make_jpeg
from tests.hostile import PAYLOAD, apng_claiming_frames, ico_holding, png_header_only

ORIGIN_OK = "https://app.example"
MAX_TTL_S = 7 * 86400
CLOSED = 0  # "status" of a connection the server closed without answering


@dataclass
class Outcome:
    status: int
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class Hostile:
    """The cluster and what the cases need: images of several apps, keys, signing secrets."""

    cluster: TestCluster
    secrets: dict[str, str]
    public_id: str = ""
    public_node: str = ""
    private_id: str = ""  # owned by the "blog" app
    hotlinked_id: str = ""  # public, owned by an app with a Referer allowlist
    blog_key: str = ""
    shop_key: str = ""
    slow_key: str = ""
    revoked_key: str = ""
    seed: int = 100

    def node(self, node_id: str) -> str:
        return self.cluster.node_settings[node_id].node.base_url

    def next_seed(self) -> int:
        self.seed += 1
        return self.seed


@pytest.fixture(scope="module")
async def hostile(
    tmp_path_factory: pytest.TempPathFactory, pg: EmbeddedPostgres, nats_server: EmbeddedNats, geoip_db: str
) -> AsyncIterator[Hostile]:
    database_url = pg.create_database(f"t_{secrets.token_hex(6)}")
    cluster = TestCluster(tmp_path_factory.mktemp("hostile"), database_url, nats_server.url, geoip_db)
    keys = {"k1": secrets.token_urlsafe(24), "k2": secrets.token_urlsafe(24), "k0": secrets.token_urlsafe(24)}
    cluster.common["signing"] = {"keys": keys, "active_kid": "k1", "retired_kids": ["k0"], "max_ttl_s": MAX_TTL_S}
    cluster.common["http"] = {"header_timeout_s": 1.0, "body_read_timeout_s": 1.0, "hotlink_refresh_s": 0.2}
    cluster.common["node"] = {"cors_origin": ORIGIN_OK}
    cluster.common["ratelimit"] = {"burst": 5}
    await cluster.start()
    try:
        h = Hostile(cluster, keys)
        up = await cluster.upload(make_jpeg(seed=1), client_ip="3.0.1.10")
        h.public_id, h.public_node = up["image_id"], up["node_id"]
        h.blog_key = (await _new_key(cluster, "blog"))["api_key"]
        h.shop_key = (await _new_key(cluster, "shop", referers=["shop.example"]))["api_key"]
        h.slow_key = (await _new_key(cluster, "slow", rate_per_s=0.01))["api_key"]
        revoked = await _new_key(cluster, "gone")
        assert (await cluster.api("DELETE", f"/v1/keys/{revoked['key_id']}"))[0] == 200
        h.revoked_key = revoked["api_key"]
        status, ticket = await cluster.api(
            "POST",
            "/v1/uploads",
            json={"visibility": "private", "client_ip": "3.0.1.10"},
            headers={"Authorization": f"Bearer {h.blog_key}"},
        )
        assert status == 201 and (await cluster.put(ticket["upload_url"], make_jpeg(seed=2)))[0] == 201
        h.private_id = ticket["image_id"]
        status, ticket = await cluster.api(
            "POST", "/v1/uploads", json={"client_ip": "3.0.1.10"}, headers={"Authorization": f"Bearer {h.shop_key}"}
        )
        assert status == 201 and (await cluster.put(ticket["upload_url"], make_jpeg(seed=3)))[0] == 201
        h.hotlinked_id = ticket["image_id"]
        from storage_node import keys as node_keys

        await cluster.wait_for(
            lambda: all(cluster.apps[n][node_keys.HOTLINK].restricted for n in cluster.node_settings),
            "nodes know the shop's Referer allowlist",
        )
        for image_id in (h.public_id, h.private_id, h.hotlinked_id):
            await cluster.wait_ready(image_id)
            await cluster.wait_replicated(image_id)
        # Build the variants the cases read, so that a read's only write (the cached variant) is done.
        assert (await http(h, "GET", public_variant(h, {}))).status == 200
        assert (await http(h, "GET", signed_get(h, h.private_id, "w300.jpg"))).status == 200
        yield h
    finally:
        await cluster.stop()


async def _new_key(cluster: TestCluster, name: str, **fields: Any) -> dict[str, Any]:
    status, body = await cluster.api("POST", "/v1/keys", json={"name": name, **fields})
    assert status == 201, body
    return dict(body)


# --- what "nothing was written" means ------------------------------------------------------------------
# Every table but `nodes` (heartbeats rewrite it all the time); whatever later migrations add is covered too.
_SKIP_TABLES = ("nodes",)


def _files(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file())


async def snapshot(h: Hostile, ended: str | None = None) -> tuple[dict[str, list[tuple[str, int]]], dict[str, str]]:
    """Every file and every row; ``ended``: an image whose row alone may change (a ticket the attack ended)."""
    files = {}
    for node_id, settings in h.cluster.node_settings.items():
        files[node_id] = await asyncio.to_thread(_files, Path(settings.node.data_dir))
    rows = {}
    async with open_pool(h.cluster.settings().database) as pool, pool.connection() as conn:
        cur = await conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
        tables = [r["tablename"] for r in await cur.fetchall() if r["tablename"] not in _SKIP_TABLES]
        assert {"images", "replicas", "audit_log", "api_keys", "apps"} <= set(tables)
        for table in tables:
            cur = await conn.execute(
                f"SELECT count(*) AS n, md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) AS digest"
                f' FROM "{table}" t'  # names from pg_tables, quoted
                + (" WHERE t.image_id IS DISTINCT FROM %s" if table == "images" else ""),
                (ended,) if table == "images" else None,
            )
            row = await cur.fetchone()
            assert row is not None
            rows[table] = f"{row['n']}:{row['digest']}"
    return files, rows


# --- request helpers ---------------------------------------------------------------------------------------
async def http(
    h: Hostile, method: str, url: str, *, headers: dict[str, str] | None = None, data: Any = None, json_body: Any = None
) -> Outcome:
    session = h.cluster.session
    assert session is not None
    async with session.request(
        method, url, headers=headers or {}, data=data, json=json_body, allow_redirects=False
    ) as resp:
        body = await resp.read()
        return Outcome(resp.status, _code(body), dict(resp.headers), body)


def _code(body: bytes) -> str | None:
    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


async def raw(
    url: str,
    payload: bytes,
    *,
    pause_s: float = 0.0,
    rest: bytes = b"",
    half_close: bool = False,
    timeout_s: float = 10.0,
) -> Outcome:
    """Speak HTTP by hand (for lies the client library will not tell): send ``payload``, maybe wait and
    send ``rest``, maybe shut down our sending side, then read the answer (CLOSED if none comes)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(payload)
        await writer.drain()
        if pause_s:
            await asyncio.sleep(pause_s)
        if rest:
            writer.write(rest)
            await writer.drain()
        if half_close:
            writer.write_eof()
        async with asyncio.timeout(timeout_s):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
            body = await reader.readexactly(int(headers.get("Content-Length", "0")))
        return Outcome(int(lines[0].split()[1]), _code(body), headers, body)
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return Outcome(CLOSED)
    finally:
        writer.close()


def put_head(url: str, length: int | None, extra: str = "", close: bool = True) -> bytes:
    parts = urlsplit(url)
    target = f"{parts.path}?{parts.query}" if parts.query else parts.path
    framing = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    connection = "Connection: close\r\n" if close else ""
    return (
        f"PUT {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: image/jpeg\r\n{framing}{extra}{connection}\r\n"
    ).encode()


async def ticket(h: Hostile) -> dict[str, Any]:
    return await h.cluster.request_upload(client_ip="3.0.1.10")  # placed on us-east-1


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def with_query(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    q = query_of(url)
    for k, v in changes.items():
        if v is None:
            q.pop(k, None)
        else:
            q[k] = v
    return parts._replace(query=urlencode(q)).geturl()


def resign_upload(
    h: Hostile,
    t: dict[str, Any],
    *,
    kid: str = "k1",
    exp: int | None = None,
    max_bytes: int | None = None,
    node_id: str | None = None,
) -> str:
    """A correctly signed upload URL with chosen claims (to test the rules, not the MAC)."""
    exp = int(time.time()) + 600 if exp is None else exp
    max_bytes = t["max_bytes"] if max_bytes is None else max_bytes
    claims = signing.Claims("upload", t["image_id"], node_id or t["node_id"], exp, max_bytes=max_bytes)
    params = signing.sign(claims, kid, h.secrets[kid].encode())
    return with_query(t["upload_url"], max=str(max_bytes), **params)


def signed_get(
    h: Hostile,
    image_id: str,
    variant: str,
    *,
    node_id: str = "us-east-1",
    kid: str = "k1",
    exp: int | None = None,
    sign_path: str | None = None,
    sign_id: str | None = None,
) -> str:
    exp = int(time.time()) + 600 if exp is None else exp
    claims = signing.Claims("download", sign_id or image_id, "", exp, path=sign_path or variant)
    return f"{h.node(node_id)}/i/{image_id}/{variant}?{urlencode(signing.sign(claims, kid, h.secrets[kid].encode()))}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def tamper(value: str) -> str:
    return value[:-2] + ("AA" if value[-2:] != "AA" else "BB")


# --- the cases -------------------------------------------------------------------------------------------
Attack = Callable[[Hostile, dict[str, Any]], Awaitable[Outcome]]
Setup = Callable[[Hostile], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Case:
    name: str
    status: int
    code: str | None
    attack: Attack
    setup: Setup | None = None
    check: Callable[[Hostile, Outcome], None] | None = None


async def one_ticket(h: Hostile) -> dict[str, Any]:
    return {"t": await ticket(h)}


async def two_tickets(h: Hostile) -> dict[str, Any]:
    return {"t": await ticket(h), "u": await ticket(h)}


async def used_ticket(h: Hostile) -> dict[str, Any]:
    t = await ticket(h)
    assert (await h.cluster.put(t["upload_url"], make_jpeg(seed=h.next_seed())))[0] == 201
    await h.cluster.wait_ready(t["image_id"])
    await h.cluster.wait_replicated(t["image_id"])
    return {"t": t}


def put_jpeg(url_of: Callable[[Hostile, dict[str, Any]], str], headers: dict[str, str] | None = None) -> Attack:
    async def attack(h: Hostile, ctx: dict[str, Any]) -> Outcome:
        return await http(h, "PUT", url_of(h, ctx), headers=headers, data=make_jpeg(seed=h.next_seed()))

    return attack


IPHONE_HEIC = Path(__file__).parents[1] / "images" / "iphone_rot6_p3.heic"
HEIC_FTYP = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"


def _half(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 2]


def put_bytes(make: Callable[[], bytes]) -> Attack:
    """PUT the bytes ``make`` returns to the ticket's upload URL (made off the loop: some take a moment)."""

    async def attack(h: Hostile, ctx: dict[str, Any]) -> Outcome:
        return await http(h, "PUT", ctx["t"]["upload_url"], data=await asyncio.to_thread(make))

    return attack


def get(
    url_of: Callable[[Hostile, dict[str, Any]], str], headers: dict[str, str] | None = None, method: str = "GET"
) -> Attack:
    async def attack(h: Hostile, ctx: dict[str, Any]) -> Outcome:
        return await http(h, method, url_of(h, ctx), headers=headers)

    return attack


def api(
    method: str,
    path_of: Callable[[Hostile, dict[str, Any]], str],
    *,
    key: Callable[[Hostile], str] | None = None,
    headers: dict[str, str] | None = None,
    data: Any = None,
    json_body: Any = None,
) -> Attack:
    async def attack(h: Hostile, ctx: dict[str, Any]) -> Outcome:
        hdrs = dict(bearer(key(h)) if key else h.cluster.auth)
        hdrs.update(headers or {})
        if hdrs.get("Authorization") == "":
            del hdrs["Authorization"]  # an anonymous caller
        return await http(
            h, method, f"{h.cluster.query_url}{path_of(h, ctx)}", headers=hdrs, data=data, json_body=json_body
        )

    return attack


def public_variant(h: Hostile, _ctx: dict[str, Any]) -> str:
    return f"{h.node(h.public_node)}/i/{h.public_id}/w300.jpg"


def private_variant(h: Hostile, _ctx: dict[str, Any]) -> str:
    return f"{h.node('us-east-1')}/i/{h.private_id}/w300.jpg"


async def content_length_lie_stall(h: Hostile, ctx: dict[str, Any]) -> Outcome:
    return await raw(ctx["t"]["upload_url"], put_head(ctx["t"]["upload_url"], 5000) + make_jpeg(seed=5)[:1000])


async def content_length_lie_hangup(h: Hostile, ctx: dict[str, Any]) -> Outcome:
    return await raw(
        ctx["t"]["upload_url"], put_head(ctx["t"]["upload_url"], 5000) + make_jpeg(seed=5)[:1000], half_close=True
    )


async def content_length_lie_longer(h: Hostile, ctx: dict[str, Any]) -> Outcome:
    data = make_jpeg(seed=h.next_seed())
    # The surplus would be the next pipelined request; it is not HTTP, so the parser refuses the connection.
    return await raw(ctx["t"]["upload_url"], put_head(ctx["t"]["upload_url"], 200, close=False) + data)


async def content_length_over_cap(h: Hostile, ctx: dict[str, Any]) -> Outcome:
    return await raw(ctx["t"]["upload_url"], put_head(ctx["t"]["upload_url"], ctx["t"]["max_bytes"] + 1))


async def chunked_over_cap(h: Hostile, ctx: dict[str, Any]) -> Outcome:
    url = resign_upload(h, ctx["t"], max_bytes=50_000)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"\xff\xd8\xff" + b"\0" * 9997

    return await http(h, "PUT", url, data=body())


async def chunked_over_cap_raw(h: Hostile, ctx: dict[str, Any]) -> Outcome:
    url = resign_upload(h, ctx["t"], max_bytes=50_000)
    chunk = b"\xff\xd8\xff" + b"\0" * 8189
    frames = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(10)) + b"0\r\n\r\n"
    return await raw(url, put_head(url, None) + frames)


async def slowloris(h: Hostile, _ctx: dict[str, Any]) -> Outcome:
    return await _slowloris(h, h.node("us-east-1"))


async def slowloris_query(h: Hostile, _ctx: dict[str, Any]) -> Outcome:
    return await _slowloris(h, h.cluster.query_url)


async def _slowloris(h: Hostile, target: str) -> Outcome:
    """Dribble a request line and headers, never finishing; meanwhile others must be served."""
    base = urlsplit(target)
    reader, writer = await asyncio.open_connection(base.hostname, base.port)
    started = time.monotonic()
    closed_after = None
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for i in range(40):  # up to ~8 s of dribbling; the server's limit is 1 s
            await asyncio.sleep(0.2)
            if i == 2:
                served = await http(h, "GET", f"{target}/healthz")
                assert served.status == 200  # the slow client does not block anyone
            try:
                writer.write(b"X-a: b\r\n")
                await writer.drain()
            except (ConnectionResetError, BrokenPipeError):
                break
            if reader.at_eof() or writer.transport.is_closing():
                break
            try:
                data = await asyncio.wait_for(reader.read(1), 0.01)
            except TimeoutError:
                continue
            if data == b"":
                break
        closed_after = time.monotonic() - started
    finally:
        writer.close()
    assert closed_after is not None and closed_after < 5, closed_after
    return Outcome(CLOSED)


async def rate_limited(h: Hostile, _ctx: dict[str, Any]) -> Outcome:
    url = f"{h.cluster.query_url}/v1/images/{h.public_id}"
    out = Outcome(0)
    for _ in range(10):  # the burst is 5
        out = await http(h, "GET", url, headers=bearer(h.slow_key))
        if out.status != 200:
            break
    return out


def redirects_to(node_id: str) -> Callable[[Hostile, Outcome], None]:
    def check(h: Hostile, out: Outcome) -> None:
        assert out.headers["Location"].startswith(h.node(node_id) + "/i/"), out.headers["Location"]

    return check


def parser_refused(_h: Hostile, out: Outcome) -> None:
    assert out.body.startswith(b"Invalid method encountered") or b"Data after" in out.body, out.body[:80]


def has_retry_after(_h: Hostile, out: Outcome) -> None:
    assert int(out.headers["Retry-After"]) >= 1


def whole_file(_h: Hostile, out: Outcome) -> None:
    assert out.body[:3] == b"\xff\xd8\xff" and "multipart" not in out.headers["Content-Type"]
    assert int(out.headers["Content-Length"]) == len(out.body)


def range_416(_h: Hostile, out: Outcome) -> None:
    assert out.headers["Content-Range"].startswith("bytes */")


NOW_PLUS = 600
PAD = "x" * 10_000

CASES = [
    # --- signed upload URLs (node PUT) ---
    Case(
        "upload: tampered sig",
        403,
        "bad_signature",
        setup=one_ticket,
        attack=put_jpeg(
            lambda h, c: with_query(c["t"]["upload_url"], sig=tamper(query_of(c["t"]["upload_url"])["sig"]))
        ),
    ),
    Case(
        "upload: tampered exp (+60 s)",
        403,
        "bad_signature",
        setup=one_ticket,
        attack=put_jpeg(
            lambda h, c: with_query(c["t"]["upload_url"], exp=str(int(query_of(c["t"]["upload_url"])["exp"]) + 60))
        ),
    ),
    Case(
        "upload: tampered max (x10)",
        403,
        "bad_signature",
        setup=one_ticket,
        attack=put_jpeg(lambda h, c: with_query(c["t"]["upload_url"], max=str(c["t"]["max_bytes"] * 10))),
    ),
    Case(
        "upload: tampered image id (another ticket's)",
        403,
        "bad_signature",
        setup=two_tickets,
        attack=put_jpeg(lambda h, c: c["t"]["upload_url"].replace(c["t"]["image_id"], c["u"]["image_id"])),
    ),
    Case(
        "upload: tampered kid (another valid key)",
        403,
        "bad_signature",
        setup=one_ticket,
        attack=put_jpeg(lambda h, c: with_query(c["t"]["upload_url"], kid="k2")),
    ),
    Case(
        "upload: tampered node (URL used on another node)",
        403,
        "bad_signature",
        setup=one_ticket,
        attack=put_jpeg(lambda h, c: c["t"]["upload_url"].replace(h.node("us-east-1"), h.node("eu-west-1"))),
    ),
    Case(
        "upload: unknown kid",
        403,
        "bad_signature",
        setup=one_ticket,
        attack=put_jpeg(lambda h, c: with_query(c["t"]["upload_url"], kid="k9")),
    ),
    Case(
        "upload: retired kid (validly signed)",
        403,
        "bad_signature",
        setup=one_ticket,
        attack=put_jpeg(lambda h, c: resign_upload(h, c["t"], kid="k0")),
    ),
    Case(
        "upload: expired by one second",
        403,
        "expired",
        setup=one_ticket,
        attack=put_jpeg(lambda h, c: resign_upload(h, c["t"], exp=int(time.time()) - 1)),
    ),
    Case(
        "upload: far-future exp beyond the maximum lifetime",
        403,
        "bad_signature",
        setup=one_ticket,
        attack=put_jpeg(lambda h, c: resign_upload(h, c["t"], exp=int(time.time()) + MAX_TTL_S + 3600)),
    ),
    Case(
        "upload: signature parameters missing",
        403,
        "bad_signature",
        setup=one_ticket,
        attack=put_jpeg(lambda h, c: c["t"]["upload_url"].split("?")[0]),
    ),
    Case(
        "upload: replayed after success (sequential)",
        409,
        "already_uploaded",
        setup=used_ticket,
        attack=put_jpeg(lambda h, c: c["t"]["upload_url"]),
    ),
    Case("upload: Content-Length over the cap", 413, "too_large", setup=one_ticket, attack=content_length_over_cap),
    Case("upload: chunked body over the cap", 413, "too_large", setup=one_ticket, attack=chunked_over_cap),
    Case("upload: raw chunked frames over the cap", 413, "too_large", setup=one_ticket, attack=chunked_over_cap_raw),
    Case(
        "upload: HTML sent as image/jpeg",
        415,
        "unsupported_type",
        setup=one_ticket,
        attack=lambda h, c: http(
            h,
            "PUT",
            c["t"]["upload_url"],
            headers={"Content-Type": "image/jpeg"},
            data=b"<html><script>alert(1)</script></html>",
        ),
    ),
    Case(
        "upload: JPEG magic then garbage",
        422,
        "invalid_image",
        setup=one_ticket,
        attack=lambda h, c: http(h, "PUT", c["t"]["upload_url"], data=b"\xff\xd8\xff\xe0" + b"\x13" * 5000),
    ),
    # Every accepted format's bombs (huge dimensions or frame counts in a tiny file), cut headers and
    # polyglots are refused from the header, before any pixel buffer exists (BMP and ICO in a sandbox).
    *(
        Case(f"upload: {name}", 422, "invalid_image", setup=one_ticket, attack=put_bytes(make))
        for name, make in (
            ("HEIC claiming 60000x60000 in 400 bytes", hostile_files.heic_bomb),
            ("TIFF claiming 100000x100000 in 300 bytes", hostile_files.tiff_bomb),
            ("BMP (RLE) claiming 50000x50000 in 1 KB", hostile_files.bmp_bomb),
            ("ICO holding a PNG that claims 30000x30000", lambda: ico_holding(png_header_only(30000))),
            ("animated PNG announcing 501 frames", lambda: apng_claiming_frames(501)),
            ("HEIC cut in half (its item locations point past the end)", lambda: _half(IPHONE_HEIC)),
            ("TIFF magic then garbage", lambda: b"II*\x00" + b"\x13" * 5000),
            ("BMP header then garbage", lambda: b"BM" + bytes(12) + (40).to_bytes(4, "little") + b"\x13" * 5000),
            ("ICO directory whose icon is an HTML page", lambda: ico_holding(PAYLOAD * 4, 16)),
            ("HEIC brand over an MP4 with a script", lambda: HEIC_FTYP + b"\x00\x00\x00\x10moov" + PAYLOAD),
        )
    ),
    Case(
        "upload: body shorter than Content-Length, client stalls",
        408,
        "timeout",
        setup=one_ticket,
        attack=content_length_lie_stall,
    ),
    # The server cancels the handler when the client hangs up mid-body: no answer, no file.
    Case(
        "upload: body shorter than Content-Length, client hangs up",
        CLOSED,
        None,
        setup=one_ticket,
        attack=content_length_lie_hangup,
    ),
    # aiohttp's HTTP parser refuses the surplus bytes with its own plain-text 400 before any handler runs.
    Case(
        "upload: body longer than Content-Length",
        400,
        None,
        setup=one_ticket,
        check=parser_refused,
        attack=content_length_lie_longer,
    ),
    Case(
        "upload: PUT from a disallowed browser origin",
        403,
        "cors_forbidden",
        setup=one_ticket,
        attack=put_jpeg(lambda h, c: c["t"]["upload_url"], headers={"Origin": "https://evil.example"}),
    ),
    Case(
        "upload: preflight from a disallowed origin",
        403,
        "cors_forbidden",
        setup=one_ticket,
        attack=get(
            lambda h, c: c["t"]["upload_url"],
            method="OPTIONS",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "PUT"},
        ),
    ),
    Case(
        "upload: path traversal id",
        404,
        "not_found",
        setup=one_ticket,
        attack=put_jpeg(lambda h, c: c["t"]["upload_url"].replace(c["t"]["image_id"], "..%2F..%2Fetc%2Fpasswd")),
    ),
    Case(
        "upload: NUL in id",
        404,
        "not_found",
        setup=one_ticket,
        attack=put_jpeg(lambda h, c: c["t"]["upload_url"].replace(c["t"]["image_id"], c["t"]["image_id"] + "%00")),
    ),
    Case(
        "upload: over-long header (10 KB)",
        431,
        "headers_too_large",
        setup=one_ticket,
        attack=put_jpeg(lambda h, c: c["t"]["upload_url"], headers={"X-Pad": PAD}),
    ),
    Case("node: slowloris headers (cut off after header_timeout_s)", CLOSED, None, attack=slowloris),
    Case("api: slowloris headers (cut off after header_timeout_s)", CLOSED, None, attack=slowloris_query),
    # Beyond what a handler ever sees: aiohttp's parser answers with its own plain-text 400.
    Case(
        "node: 20 KB request line (parser refuses)",
        400,
        None,
        attack=lambda h, c: raw(h.node("us-east-1"), f"GET /i/{'a' * 20_000} HTTP/1.1\r\nHost: x\r\n\r\n".encode()),
    ),
    Case(
        "node: 200 header fields (parser refuses)",
        400,
        None,
        attack=lambda h, c: raw(
            h.node("us-east-1"),
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n",
        ),
    ),
    Case(
        "node: Content-Length and chunked together (request smuggling)",
        400,
        None,
        setup=one_ticket,
        attack=lambda h, c: raw(
            c["t"]["upload_url"], put_head(c["t"]["upload_url"], 5, "Transfer-Encoding: chunked\r\n") + b"0\r\n\r\n"
        ),
    ),
    # --- node reads: private images, originals, ids, ranges ---
    Case("read: private image without signature", 403, "bad_signature", attack=get(private_variant)),
    Case(
        "read: private image, tampered sig",
        403,
        "bad_signature",
        attack=get(
            lambda h, c: with_query(
                signed_get(h, h.private_id, "w300.jpg"),
                sig=tamper(query_of(signed_get(h, h.private_id, "w300.jpg"))["sig"]),
            )
        ),
    ),
    Case(
        "read: private image, signature of another variant",
        403,
        "bad_signature",
        attack=get(lambda h, c: signed_get(h, h.private_id, "w600.jpg", sign_path="w300.jpg")),
    ),
    Case(
        "read: private image, signature of another image",
        403,
        "bad_signature",
        attack=get(lambda h, c: signed_get(h, h.private_id, "w300.jpg", sign_id=h.public_id)),
    ),
    Case(
        "read: private image, expired by one second",
        403,
        "expired",
        attack=get(lambda h, c: signed_get(h, h.private_id, "w300.jpg", exp=int(time.time()) - 1)),
    ),
    Case(
        "read: private image, retired kid",
        403,
        "bad_signature",
        attack=get(lambda h, c: signed_get(h, h.private_id, "w300.jpg", kid="k0")),
    ),
    Case(
        "read: private image, far-future exp",
        403,
        "bad_signature",
        attack=get(lambda h, c: signed_get(h, h.private_id, "w300.jpg", exp=int(time.time()) + 10 * MAX_TTL_S)),
    ),
    Case(
        "read: original of a public image without signature",
        403,
        "bad_signature",
        attack=get(lambda h, c: f"{h.node(h.public_node)}/i/{h.public_id}/original"),
    ),
    Case(
        "read: path traversal in the id",
        404,
        "not_found",
        attack=get(lambda h, c: f"{h.node('us-east-1')}/i/..%2F..%2Fetc/passwd"),
    ),
    Case("read: %2e%2e id", 404, "not_found", attack=get(lambda h, c: f"{h.node('us-east-1')}/i/%2e%2e/original")),
    Case(
        "read: over-long id", 404, "not_found", attack=get(lambda h, c: f"{h.node('us-east-1')}/i/{'a' * 300}/w300.jpg")
    ),
    Case(
        "read: sidecar file name as variant",
        404,
        "not_found",
        attack=get(lambda h, c: f"{h.node(h.public_node)}/i/{h.public_id}/meta.json"),
    ),
    Case(
        "read: unknown variant format",
        404,
        "not_found",
        attack=get(lambda h, c: f"{h.node(h.public_node)}/i/{h.public_id}/w300.svg"),
    ),
    Case(
        "read: unsigned width not in the list",
        400,
        "size_not_allowed",
        attack=get(lambda h, c: f"{h.node(h.public_node)}/i/{h.public_id}/w301.jpg"),
    ),
    Case(
        "read: unsatisfiable range",
        416,
        "range_not_satisfiable",
        check=range_416,
        attack=get(public_variant, headers={"Range": "bytes=99999999-"}),
    ),
    Case(
        "read: 300-range amplification (whole file once)",
        200,
        None,
        check=whole_file,
        attack=get(public_variant, headers={"Range": "bytes=" + ",".join(f"{i}-{i + 1}" for i in range(0, 900, 3))}),
    ),
    Case(
        "read: over-long header (10 KB)", 431, "headers_too_large", attack=get(public_variant, headers={"X-Pad": PAD})
    ),
    # --- query service ---
    Case(
        "api: no API key",
        401,
        "unauthorized",
        attack=api("POST", lambda h, c: "/v1/uploads", headers={"Authorization": ""}, json_body={}),
    ),
    Case(
        "api: unknown API key",
        401,
        "unauthorized",
        attack=api("POST", lambda h, c: "/v1/uploads", key=lambda h: "mk_deadbeef_nope", json_body={}),
    ),
    Case(
        "api: revoked API key",
        401,
        "unauthorized",
        attack=api("POST", lambda h, c: "/v1/uploads", key=lambda h: h.revoked_key, json_body={}),
    ),
    Case(
        "api: Basic instead of Bearer",
        401,
        "unauthorized",
        attack=api("POST", lambda h, c: "/v1/uploads", headers={"Authorization": "Basic dXNlcjpwYXNz"}, json_body={}),
    ),
    Case(
        "api: 300-character bearer token",
        401,
        "unauthorized",
        attack=api("POST", lambda h, c: "/v1/uploads", key=lambda h: "mk_" + "a" * 300, json_body={}),
    ),
    Case(
        "api: app key on an admin endpoint",
        403,
        "forbidden",
        attack=api("GET", lambda h, c: "/v1/nodes", key=lambda h: h.blog_key),
    ),
    Case(
        "api: app key creating keys",
        403,
        "forbidden",
        attack=api("POST", lambda h, c: "/v1/keys", key=lambda h: h.blog_key, json_body={"name": "x"}),
    ),
    Case(
        "api: malformed JSON",
        400,
        "invalid_request",
        attack=api(
            "POST",
            lambda h, c: "/v1/uploads",
            data=b'{"visibility": "pub',
            headers={"Content-Type": "application/json"},
        ),
    ),
    Case(
        "api: body shorter than Content-Length, client stalls",
        408,
        "timeout",
        attack=lambda h, c: raw(
            h.cluster.query_url,
            (
                f"POST /v1/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {h.cluster.api_key}\r\n"
                'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"visibility":'
            ).encode(),
        ),
    ),
    Case(
        "api: JSON nested 30,000 deep",
        400,
        "invalid_request",
        attack=api(
            "POST",
            lambda h, c: "/v1/uploads",
            data=b"[" * 30_000 + b"]" * 30_000,
            headers={"Content-Type": "application/json"},
        ),
    ),
    Case(
        "api: NUL and a lone surrogate in strings",
        400,
        "invalid_request",
        attack=api(
            "POST",
            lambda h, c: "/v1/uploads",
            data=b'{"tags": ["a\\u0000b"], "filename": "\\ud800"}',
            headers={"Content-Type": "application/json"},
        ),
    ),
    Case(
        "api: JSON that is not an object",
        400,
        "invalid_request",
        attack=api("POST", lambda h, c: "/v1/uploads", json_body=["public"]),
    ),
    Case(
        "api: unknown visibility",
        400,
        "invalid_request",
        attack=api("POST", lambda h, c: "/v1/uploads", json_body={"visibility": "secret"}),
    ),
    Case(
        "api: size over the limit",
        413,
        "too_large",
        attack=api("POST", lambda h, c: "/v1/uploads", json_body={"size": 10**12}),
    ),
    Case(
        "api: 70 KB body",
        400,
        "invalid_request",
        attack=api("POST", lambda h, c: "/v1/uploads", json_body={"filename": "x", "metadata": {"p": "x" * 70_000}}),
    ),
    Case(
        "api: client_ip that is not an address",
        400,
        "invalid_request",
        attack=api("POST", lambda h, c: "/v1/uploads", json_body={"client_ip": "127.0.0.1; DROP TABLE images"}),
    ),
    Case(
        "api: callback_url with a javascript: scheme",
        400,
        "invalid_request",
        attack=api("POST", lambda h, c: "/v1/uploads", json_body={"callback_url": "javascript:alert(1)"}),
    ),
    # callback_url SSRF guard (built by the image pipeline, issue 3): refused at upload-request time.
    *[
        Case(
            f"api: callback_url to {target}",
            400,
            "invalid_request",
            attack=api("POST", lambda h, c: "/v1/uploads", json_body={"callback_url": f"http://{target}/hook"}),
        )
        for target in ("127.0.0.1", "169.254.169.254", "10.0.0.1", "[::1]", "localhost:8080")
    ],
    Case(
        "api: unknown fmt",
        400,
        "invalid_request",
        attack=api("GET", lambda h, c: f"/v1/images/{h.public_id}/url?fmt=bmp"),
    ),
    Case(
        "api: another app's private image (status)",
        404,
        "not_found",
        attack=api("GET", lambda h, c: f"/v1/images/{h.private_id}", key=lambda h: h.shop_key),
    ),
    Case(
        "api: another app's private image (url)",
        404,
        "not_found",
        attack=api("GET", lambda h, c: f"/v1/images/{h.private_id}/url", key=lambda h: h.shop_key),
    ),
    Case(
        "api: private image without a key",
        404,
        "not_found",
        attack=api("GET", lambda h, c: f"/v1/images/{h.private_id}/url", headers={"Authorization": ""}),
    ),
    Case(
        "api: delete another app's private image",
        404,
        "not_found",
        attack=api("DELETE", lambda h, c: f"/v1/images/{h.private_id}", key=lambda h: h.shop_key),
    ),
    Case(
        "api: delete another app's public image",
        403,
        "forbidden",
        attack=api("DELETE", lambda h, c: f"/v1/images/{h.public_id}", key=lambda h: h.shop_key),
    ),
    Case(
        "api: delete without a key",
        401,
        "unauthorized",
        attack=api("DELETE", lambda h, c: f"/v1/images/{h.public_id}", headers={"Authorization": ""}),
    ),
    Case(
        "api: private image through /img",
        403,
        "forbidden",
        attack=api("GET", lambda h, c: f"/img/{h.private_id}", key=lambda h: h.blog_key),
    ),
    Case(
        "api: original asked by another app",
        403,
        "forbidden",
        attack=api("GET", lambda h, c: f"/v1/images/{h.public_id}/url?variant=original", key=lambda h: h.blog_key),
    ),
    Case(
        "api: Referer from another site (hotlink)",
        403,
        "hotlink_forbidden",
        attack=api(
            "GET",
            lambda h, c: f"/img/{h.hotlinked_id}",
            headers={"Authorization": "", "Referer": "https://evil.example/x"},
        ),
    ),
    Case(
        "read: Referer from another site on a node URL (hotlink)",
        403,
        "hotlink_forbidden",
        attack=get(
            lambda h, c: f"{h.node('us-east-1')}/i/{h.hotlinked_id}/w300.jpg",
            headers={"Referer": "https://evil.example/page"},
        ),
    ),
    Case(
        "api: spoofed X-Forwarded-For from an untrusted peer (ignored)",
        302,
        None,
        check=redirects_to("us-east-1"),
        attack=api(
            "GET", lambda h, c: f"/img/{h.public_id}", headers={"Authorization": "", "X-Forwarded-For": "52.16.1.10"}
        ),
    ),
    Case(
        "api: spoofed Forwarded from an untrusted peer (ignored)",
        302,
        None,
        check=redirects_to("us-east-1"),
        attack=api(
            "GET", lambda h, c: f"/img/{h.public_id}", headers={"Authorization": "", "Forwarded": "for=13.228.1.10"}
        ),
    ),
    Case(
        "api: client_ip without an API key (ignored)",
        302,
        None,
        check=redirects_to("us-east-1"),
        attack=api("GET", lambda h, c: f"/img/{h.public_id}?client_ip=52.16.1.10", headers={"Authorization": ""}),
    ),
    Case(
        "api: open-redirect parameters (target only from the registry)",
        302,
        None,
        check=redirects_to("us-east-1"),
        attack=api(
            "GET",
            lambda h, c: f"/img/{h.public_id}?url=https://evil.example/&next=//evil.example",
            headers={"Authorization": "", "Host": "evil.example"},
        ),
    ),
    Case(
        "api: path traversal id", 404, "not_found", attack=api("GET", lambda h, c: "/v1/images/..%2F..%2Fetc%2Fpasswd")
    ),
    Case("api: NUL in id", 404, "not_found", attack=api("GET", lambda h, c: f"/v1/images/{h.public_id}%00")),
    Case("api: over-long id", 404, "not_found", attack=api("GET", lambda h, c: f"/v1/images/{'b' * 500}")),
    Case(
        "api: over-long header (10 KB)",
        431,
        "headers_too_large",
        attack=api("GET", lambda h, c: f"/v1/images/{h.public_id}", headers={"Cookie": PAD}),
    ),
    Case("api: key over its rate", 429, "rate_limited", check=has_retry_after, attack=rate_limited),
    Case("api: revoke an unknown key", 404, "not_found", attack=api("DELETE", lambda h, c: "/v1/keys/0badc0de")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_hostile_request(hostile: Hostile, case: Case) -> None:
    ctx = await case.setup(hostile) if case.setup else {}
    # A PUT refused for its content ends its ticket (the one write it makes): the image is `rejected`.
    ended = ctx["t"]["image_id"] if case.status in (413, 415, 422) and "t" in ctx else None
    before = await snapshot(hostile, ended)
    outcome = await case.attack(hostile, ctx)
    assert (outcome.status, outcome.code) == (case.status, case.code), outcome.body[:300]
    if case.check is not None:
        case.check(hostile, outcome)
    await asyncio.sleep(0.05)  # let a server-side handler whose client vanished finish its cleanup
    assert await snapshot(hostile, ended) == before, "something was written"
    if ended is not None:
        status, body = await hostile.cluster.api("GET", f"/v1/images/{ended}")
        assert status == 200 and body["status"] == "rejected" and body["reason"].startswith(f"{case.code}: "), body


def test_catalogue_is_big_enough() -> None:
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)


async def test_racing_replays_one_wins(hostile: Hostile) -> None:
    """Two PUTs of the same upload URL at once: exactly one 201, the other 409, one stored object."""
    t = await ticket(hostile)
    data = [make_jpeg(seed=hostile.next_seed()) for _ in range(2)]
    results = await asyncio.gather(*(http(hostile, "PUT", t["upload_url"], data=d) for d in data))
    assert sorted((r.status, r.code) for r in results) == [(201, None), (409, "already_uploaded")]
    files = [p for p in hostile.cluster.files_under("us-east-1", "objects") if t["image_id"] in str(p)]
    assert sorted(p.name for p in files) == ["meta.json", "original"]
    winner = next(r for r in results if r.status == 201)
    assert json.loads(winner.body)["sha256"] == hostile.cluster.disk_sha256("us-east-1", t["image_id"])
