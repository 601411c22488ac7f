"""The ticket's signed status URL: a browser reads its own upload's status (a private one too) without an API
key, cross-origin; a tampered, foreign or expired signature is refused before anything is looked up."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp

from common import signing
from query_service.status_links import status_query
from tests.cluster import TestCluster, make_jpeg

ORIGIN = {"Origin": "https://app.example"}


async def anonymous_get(url: str) -> tuple[int, Any, str | None]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=ORIGIN) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers.get("Access-Control-Allow-Origin")


def with_query(url: str, **params: str) -> str:
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()} | params
    return url.split("?", 1)[0] + "?" + urlencode(query)


async def test_signed_status_url_reads_a_private_image_without_a_key(cluster: TestCluster) -> None:
    ticket = await cluster.request_upload(visibility="private")
    status_url, image_id = ticket["signed_status_url"], ticket["image_id"]
    assert status_url.startswith(f"{ticket['status_url']}?")  # the plain status_url, signed
    assert ticket["status_url"] == f"{cluster.query_url}/v1/images/{image_id}"
    assert set(parse_qs(urlsplit(status_url).query)) == {"exp", "kid", "sig"}
    # The signature lives past the upload URL's expiry (by one more upload lifetime).
    upload_exp = int(parse_qs(urlsplit(ticket["upload_url"]).query)["exp"][0])
    ttl = cluster.settings().signing.upload_ttl_s
    assert int(parse_qs(urlsplit(status_url).query)["exp"][0]) == upload_exp + ttl

    status, body, cors = await anonymous_get(status_url)
    assert (status, body["status"], body["visibility"], cors) == (200, "requested", "private", "*")
    assert (await cluster.put(ticket["upload_url"], make_jpeg(seed=3)))[0] == 201
    await cluster.wait_ready(image_id)
    status, body, _ = await anonymous_get(status_url)
    assert (status, body["status"]) == (200, "ready")
    # Without the signature the private image stays hidden.
    status, body, cors = await anonymous_get(status_url.split("?", 1)[0])
    assert (status, body["error"]["code"], cors) == (404, "not_found", "*")


async def test_bad_status_signatures_are_refused(cluster: TestCluster) -> None:
    first = await cluster.request_upload(visibility="private")
    other = await cluster.request_upload(visibility="public")
    sig = parse_qs(urlsplit(first["signed_status_url"]).query)["sig"][0]
    tampered = with_query(first["signed_status_url"], sig=("A" if sig[0] != "A" else "B") + sig[1:])
    foreign = other["signed_status_url"].split("?", 1)[0] + "?" + urlsplit(first["signed_status_url"]).query
    later = with_query(first["signed_status_url"], exp=str(int(time.time()) + 999_999))
    partial = first["signed_status_url"].split("?", 1)[0] + "?sig=" + sig
    for url in (tampered, foreign, later, partial):
        status, body, cors = await anonymous_get(url)
        assert (status, body["error"]["code"], cors) == (403, "bad_signature", "*"), url
    # A signature checked before the database: an unknown image with a bad one is a 403, not a 404.
    unknown = f"{cluster.query_url}/v1/images/{'a' * 22}?exp=1&kid=k1&sig=x"
    status, body, _ = await anonymous_get(unknown)
    assert (status, body["error"]["code"]) == (403, "bad_signature")

    cfg = cluster.settings().signing
    now = int(time.time())
    past = status_query(cfg, first["image_id"], upload_exp=now - 2 * cfg.upload_ttl_s, now=now)
    expired = f"{cluster.query_url}/v1/images/{first['image_id']}?{urlencode(past)}"
    status, body, _ = await anonymous_get(expired)
    assert (status, body["error"]["code"]) == (403, "expired")
    # An upload signature for the same image does not open its status.
    upload_sig = signing.sign_with(cfg, signing.Claims("upload", first["image_id"], "", now + 60))
    status, body, _ = await anonymous_get(f"{cluster.query_url}/v1/images/{first['image_id']}?{urlencode(upload_sig)}")
    assert (status, body["error"]["code"]) == (403, "bad_signature")


async def test_the_upload_module_is_served_for_other_origins(cluster: TestCluster) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{cluster.query_url}/assets/minicdn-upload.js", headers=ORIGIN) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/javascript")
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
            assert "export class UploadError" in await resp.text()
