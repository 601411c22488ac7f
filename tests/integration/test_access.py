"""Apps and keys (CLI included), ownership, private images and originals behind signed URLs, audit
records, rate limits, hotlink protection, trusted proxies and signing-key rotation, end to end."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from common import signing
from common.config import HttpSettings
from common.db.pool import open_pool
from minicdn.cli.main import main as cli_main
from tests.cluster import TestCluster, make_jpeg


async def sql(cluster: TestCluster, query: str, *args: Any) -> list[dict[str, Any]]:
    async with open_pool(cluster.settings().database) as pool, pool.connection() as conn:
        cur = await conn.execute(query, args)
        return list(await cur.fetchall())


async def ddl(cluster: TestCluster, statement: str) -> None:
    async with open_pool(cluster.settings().database) as pool, pool.connection() as conn:
        await conn.execute(statement)


async def make_key(cluster: TestCluster, name: str, **fields: Any) -> dict[str, Any]:
    status, body = await cluster.api("POST", "/v1/keys", json={"name": name, **fields})
    assert status == 201, body
    return dict(body)


async def get(
    cluster: TestCluster, url: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, bytes, Any]:
    assert cluster.session is not None
    async with cluster.session.request(method, url, headers=headers or {}, allow_redirects=False) as resp:
        return resp.status, await resp.read(), resp.headers


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_keys_cli_create_list_revoke(cluster: TestCluster, capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--query-url", cluster.query_url, "--api-key", cluster.api_key]
    assert await asyncio.to_thread(cli_main, ["keys", "create", "shop", "--rate", "5", *flags]) == 0
    out = capsys.readouterr().out
    key_id = re.search(r"key id ([0-9a-f]{8})", out)[1]  # type: ignore[index]
    plaintext = re.search(r"(mk_\S+)", out)[1]  # type: ignore[index]
    # Stored hashed: the plaintext appears nowhere in the table.
    rows = await sql(
        cluster, "SELECT key_hash::text AS h, name, scopes, rate_per_s FROM api_keys WHERE key_id = %s", key_id
    )
    assert rows[0]["name"] == "shop" and rows[0]["scopes"] == ["app"] and rows[0]["rate_per_s"] == 5
    assert plaintext not in str(await sql(cluster, "SELECT * FROM api_keys"))
    status, _ = await cluster.api("POST", "/v1/uploads", json={}, headers=bearer(plaintext))
    assert status == 201
    status, body = await cluster.api("GET", "/v1/nodes", headers=bearer(plaintext))
    assert status == 403 and body["error"]["code"] == "forbidden"  # app scope is not admin

    assert await asyncio.to_thread(cli_main, ["keys", "list", *flags]) == 0
    listing = capsys.readouterr().out
    assert key_id in listing and "shop" in listing and plaintext not in listing

    assert await asyncio.to_thread(cli_main, ["keys", "revoke", key_id, *flags]) == 0
    assert f"revoked {key_id}" in capsys.readouterr().out
    status, body = await cluster.api("POST", "/v1/uploads", json={}, headers=bearer(plaintext))
    assert status == 401 and body["error"]["code"] == "unauthorized"
    actions = [
        r["action"]
        for r in await sql(
            cluster,
            "SELECT action FROM audit_log WHERE detail->>'new_key_id' = %s"
            " OR detail->>'revoked_key_id' = %s ORDER BY audit_id",
            key_id,
            key_id,
        )
    ]
    assert actions == ["key.create", "key.revoke"]
    # An app key cannot manage keys.
    assert (
        await asyncio.to_thread(
            cli_main, ["keys", "list", "--query-url", cluster.query_url, "--api-key", cluster.api_key + "x"]
        )
        == 1
    )


async def test_ownership_is_by_app_and_private_images_are_signed(cluster: TestCluster) -> None:
    shop = await make_key(cluster, "shop")
    shop2 = await make_key(cluster, "shop-rotated", app_id=shop["app_id"])  # a second key of the same app
    blog = await make_key(cluster, "blog")
    ticket = await cluster.api("POST", "/v1/uploads", json={"visibility": "private"}, headers=bearer(shop["api_key"]))
    assert ticket[0] == 201
    data = make_jpeg(seed=5)
    status, _ = await cluster.put(ticket[1]["upload_url"], data)
    assert status == 201
    image_id = ticket[1]["image_id"]
    await cluster.wait_ready(image_id)
    await cluster.wait_replicated(image_id)

    # Another app: not found (existence not revealed); the same app's other key: fine.
    for path in (f"/v1/images/{image_id}", f"/v1/images/{image_id}/url"):
        status, body = await cluster.api("GET", path, headers=bearer(blog["api_key"]))
        assert status == 404 and body["error"]["code"] == "not_found"
        assert (await cluster.api("GET", path, headers=bearer(shop2["api_key"])))[0] == 200
    status, body = await cluster.api("GET", f"/img/{image_id}", headers=bearer(shop["api_key"]))
    assert status == 403 and body["error"]["code"] == "forbidden"

    status, found = await cluster.api("GET", f"/v1/images/{image_id}/url?w=300", headers=bearer(shop2["api_key"]))
    assert status == 200 and found["expires_at"] is not None
    assert set(parse_qs(urlsplit(found["url"]).query)) == {"exp", "kid", "sig"}
    # Every replica serves it with the signature (the copies learned it is private), none without.
    for url in [found["url"], *(a["url"] for a in found["alternatives"])]:
        status, body, headers = await get(cluster, url)
        assert status == 200 and headers["Cache-Control"].startswith("private"), url
        status, body, _ = await get(cluster, url.split("?")[0])
        assert status == 403, url

    # Audit: the request and the upload, attributed to the app.
    rows = await sql(
        cluster, "SELECT action, app_id, key_id FROM audit_log WHERE image_id = %s ORDER BY audit_id", image_id
    )
    assert [(r["action"], r["app_id"]) for r in rows] == [
        ("upload.request", shop["app_id"]),
        ("upload.complete", shop["app_id"]),
    ]
    assert rows[0]["key_id"] == shop["key_id"]


async def test_originals_only_for_the_owner_and_signed(cluster: TestCluster) -> None:
    data = make_jpeg(seed=6)
    up = await cluster.upload(data)  # public, owned by the test key's app
    await cluster.wait_ready(up["image_id"])
    other = await make_key(cluster, "other")
    status, body = await cluster.api(
        "GET", f"/v1/images/{up['image_id']}/url?variant=original", headers=bearer(other["api_key"])
    )
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = await cluster.api(
        "GET", f"/v1/images/{up['image_id']}/url?variant=original", headers={"Authorization": ""}
    )
    assert status == 401
    status, found = await cluster.api("GET", f"/v1/images/{up['image_id']}/url?variant=original&client_ip=3.0.1.10")
    assert status == 200 and found["variant"] == "original" and found["node_id"] == up["node_id"]
    status, body, headers = await get(cluster, found["url"])
    assert status == 200 and body == data and headers["Content-Type"] == "image/jpeg"
    assert headers["Cache-Control"].startswith("private")
    status, _, _ = await get(cluster, found["url"].split("?")[0])
    assert status == 403
    # The signature is bound to the path: it does not open a variant, and a variant's does not open the original.
    status, _, _ = await get(cluster, found["url"].replace("/original?", "/w300.jpg?"))
    assert status == 403


async def test_rate_limit_429_with_retry_after(cluster: TestCluster) -> None:
    slow = await make_key(cluster, "slow", rate_per_s=0.5)
    up = await cluster.upload(make_jpeg(seed=7))
    statuses = []
    retry_after = None
    for _ in range(120):
        assert cluster.session is not None
        async with cluster.session.get(
            f"{cluster.query_url}/v1/images/{up['image_id']}", headers=bearer(slow["api_key"])
        ) as resp:
            statuses.append(resp.status)
            if resp.status == 429:
                body = await resp.json()
                assert body["error"]["code"] == "rate_limited"
                retry_after = int(resp.headers["Retry-After"])
                break
    assert statuses[:-1] == [200] * (len(statuses) - 1) and statuses[-1] == 429
    assert len(statuses) == 101  # the default burst of 100, then refused
    assert 1 <= retry_after <= 2  # type: ignore[operator]
    # Other keys are not affected.
    assert (await cluster.api("GET", f"/v1/images/{up['image_id']}"))[0] == 200


async def test_hotlink_protection_on_img(cluster: TestCluster) -> None:
    shop = await make_key(cluster, "shop", referers=["shop.example"])
    ticket = await cluster.api("POST", "/v1/uploads", json={}, headers=bearer(shop["api_key"]))
    await cluster.put(ticket[1]["upload_url"], make_jpeg(seed=8))
    image_id = ticket[1]["image_id"]
    await cluster.wait_ready(image_id)
    await cluster.wait_replicated(image_id)
    img = f"{cluster.query_url}/img/{image_id}?w=300"
    for referer, expected in (
        ("https://shop.example/p/1", 302),
        ("https://www.shop.example/", 302),
        ("", 302),
        ("https://evil.example/", 403),
        ("https://shop.example.evil.example/", 403),
    ):
        status, body, _ = await get(cluster, img, headers={"Referer": referer} if referer else {})
        assert status == expected, referer
        if expected == 403:
            assert b"hotlink_forbidden" in body
    # The nodes hold the same line on their image URLs (signed URLs are the owner's grant: exempt).
    from storage_node import keys as node_keys

    for node_id in cluster.node_settings:  # instead of waiting for the periodic reload (http.hotlink_refresh_s)
        await cluster.apps[node_id][node_keys.HOTLINK].reload()
    _, found = await cluster.api("GET", f"/v1/images/{image_id}/url?w=300")
    for referer, expected in (("https://shop.example/", 200), ("", 200), ("https://evil.example/", 403)):
        status, body, _ = await get(cluster, found["url"], headers={"Referer": referer} if referer else {})
        assert status == expected, referer
    _, original = await cluster.api(
        "GET", f"/v1/images/{image_id}/url?variant=original", headers=bearer(shop["api_key"])
    )
    assert (await get(cluster, original["url"], headers={"Referer": "https://evil.example/"}))[0] == 200
    # Another app's images (no allowlist) embed anywhere.
    up = await cluster.upload(make_jpeg(seed=9))
    await cluster.wait_ready(up["image_id"])
    await cluster.wait_replicated(up["image_id"])
    status, _, _ = await get(
        cluster, f"{cluster.query_url}/img/{up['image_id']}", headers={"Referer": "https://evil.example/"}
    )
    assert status == 302


async def test_forwarded_headers_only_from_trusted_proxies(cluster: TestCluster) -> None:
    from query_service import keys

    up = await cluster.upload(make_jpeg(seed=10))
    await cluster.wait_ready(up["image_id"])
    await cluster.wait_replicated(up["image_id"])
    url = f"{cluster.query_url}/img/{up['image_id']}"
    eu = {"X-Forwarded-For": "52.16.1.10"}
    # Untrusted peer (nothing trusted yet): the header is ignored; 127.0.0.1 is placed at the default (us-east).
    status, _, headers = await get(cluster, url, headers=eu)
    assert status == 302
    assert _node_of(cluster, headers["Location"]) == "us-east-1"
    status, _, headers = await get(cluster, url, headers={"Forwarded": "for=52.16.1.10"})
    assert _node_of(cluster, headers["Location"]) == "us-east-1"
    # Trust loopback (where the test client connects from): the proxy's word is taken.
    await _restart_query(cluster, http=HttpSettings(trusted_proxies=("127.0.0.0/8",)))
    assert cluster.apps["query"][keys.PROXIES].trusts("127.0.0.1")
    status, _, headers = await get(cluster, url, headers=eu)
    assert _node_of(cluster, headers["Location"]) == "eu-west-1"
    status, _, headers = await get(cluster, url, headers={"Forwarded": 'for="13.228.1.10:4711"'})
    assert _node_of(cluster, headers["Location"]) == "ap-southeast-1"
    # client_ip in the query is honoured only with an API key.
    status, _, headers = await get(cluster, f"{url}?client_ip=13.228.1.10")
    assert _node_of(cluster, headers["Location"]) == "us-east-1"


def _node_of(cluster: TestCluster, location: str) -> str:
    for node_id, s in cluster.node_settings.items():
        if location.startswith(s.node.base_url + "/"):
            return node_id
    raise AssertionError(f"redirect to a place outside the node registry: {location}")


async def _restart_nodes(cluster: TestCluster, signing_cfg: dict[str, Any]) -> None:
    cluster.common["signing"] = signing_cfg
    new_signing = cluster.settings().signing
    for node_id, settings in list(cluster.node_settings.items()):
        cluster.node_settings[node_id] = dataclasses.replace(settings, signing=new_signing)
        await cluster.stop_node(node_id)
        await cluster.start_node(node_id)


async def _restart_query(cluster: TestCluster, **changes: Any) -> None:
    from query_service import keys
    from query_service.app import create_app

    settings = dataclasses.replace(cluster.apps["query"][keys.SETTINGS], signing=cluster.settings().signing, **changes)
    await cluster.runners.pop("query").cleanup()
    cluster.apps.pop("query")
    await cluster._serve("query", create_app(settings), settings.query.port, lane="query")
    await cluster.wait_for(lambda: cluster.healthy_count(3), "three healthy nodes")


async def test_signing_key_rotation_end_to_end(cluster: TestCluster) -> None:
    k1 = cluster.common["signing"]["keys"]["k1"]
    up = await cluster.upload(make_jpeg(seed=11), visibility="private")
    await cluster.wait_ready(up["image_id"])
    await cluster.wait_replicated(up["image_id"])
    old_ticket = await cluster.request_upload()
    _, old_url = await cluster.api("GET", f"/v1/images/{up['image_id']}/url?client_ip=3.0.1.10")
    assert "kid=k1" in old_url["url"]

    # Stage 1: k2 is added and signs; k1 still verifies.
    k2 = "k2-secret-" + "x" * 20
    await _restart_nodes(cluster, {"keys": {"k1": k1, "k2": k2}, "active_kid": "k2"})
    await _restart_query(cluster)
    _, new_url = await cluster.api("GET", f"/v1/images/{up['image_id']}/url?client_ip=3.0.1.10")
    assert "kid=k2" in new_url["url"]
    for url in (old_url["url"], new_url["url"]):
        assert (await get(cluster, url))[0] == 200
    status, _ = await cluster.put(old_ticket["upload_url"], make_jpeg(seed=12))
    assert status == 201  # an upload URL signed before the rotation still works

    # Stage 2: k1 retired: its URLs stop working at once, k2's keep working.
    await _restart_nodes(cluster, {"keys": {"k1": k1, "k2": k2}, "active_kid": "k2", "retired_kids": ["k1"]})
    await cluster.wait_for(lambda: cluster.healthy_count(3), "three healthy nodes")
    status, body, _ = await get(cluster, old_url["url"])
    assert status == 403 and b"bad_signature" in body
    assert (await get(cluster, new_url["url"]))[0] == 200
    # And a URL signed with an unknown kid is refused the same way.
    params = signing.sign(
        signing.Claims("download", up["image_id"], "", int(time.time()) + 60, path=new_url["variant"]), "k9", b"z" * 32
    )
    base = new_url["url"].split("?")[0]
    status, body, _ = await get(cluster, f"{base}?exp={params['exp']}&kid=k9&sig={params['sig']}")
    assert status == 403 and b"bad_signature" in body


async def test_keys_api_rejects_bad_input(cluster: TestCluster) -> None:
    for body in (
        {"name": ""},
        {"name": "x", "scopes": ["root"]},
        {"name": "x", "rate_per_s": -1},
        {"name": "x", "referers": ["not a host"]},
        {"name": "x", "app_id": "../../etc"},
    ):
        status, answer = await cluster.api("POST", "/v1/keys", json=body)
        assert status == 400 and answer["error"]["code"] == "invalid_request", body
    status, answer = await cluster.api("POST", "/v1/keys", json={"name": "x", "app_id": "deadbeef"})
    assert status == 404 and answer["error"]["code"] == "not_found"
    status, answer = await cluster.api("DELETE", "/v1/keys/deadbeef")
    assert status == 404


async def test_deletes_are_by_app_and_audited(cluster: TestCluster) -> None:
    shop = await make_key(cluster, "shop")
    shop2 = await make_key(cluster, "shop-2", app_id=shop["app_id"])
    blog = await make_key(cluster, "blog")
    ids: dict[str, str] = {}  # visibility -> image_id
    for visibility in ("public", "private"):
        status, ticket = await cluster.api(
            "POST", "/v1/uploads", json={"visibility": visibility}, headers=bearer(shop["api_key"])
        )
        assert (await cluster.put(ticket["upload_url"], make_jpeg(seed=50 + len(ids))))[0] == 201
        ids[visibility] = ticket["image_id"]
    # Another app: 403 for a public image, 404 for a private one (not revealed); nothing recorded.
    status, body = await cluster.api("DELETE", f"/v1/images/{ids['public']}", headers=bearer(blog["api_key"]))
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = await cluster.api("DELETE", f"/v1/images/{ids['private']}", headers=bearer(blog["api_key"]))
    assert status == 404 and body["error"]["code"] == "not_found"
    assert await sql(cluster, "SELECT 1 FROM audit_log WHERE action = 'image.delete'") == []
    # Any key of the owning app may delete.
    status, body = await cluster.api("DELETE", f"/v1/images/{ids['private']}", headers=bearer(shop2["api_key"]))
    assert status == 202 and body["status"] == "deleted"
    rows = await sql(cluster, "SELECT app_id, key_id, image_id FROM audit_log WHERE action = 'image.delete'")
    assert rows == [{"app_id": shop["app_id"], "key_id": shop2["key_id"], "image_id": ids["private"]}]


async def test_upload_request_and_its_audit_row_commit_together(cluster: TestCluster) -> None:
    # A real Postgres trigger makes this app's `upload.request` audit insert fail: the image row must go too.
    shop = await make_key(cluster, "audit-fails")
    await ddl(
        cluster,
        "CREATE FUNCTION test_fail_audit() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'audit refused'; END $$",
    )
    await ddl(
        cluster,
        "CREATE TRIGGER test_fail_audit BEFORE INSERT ON audit_log FOR EACH ROW"
        f" WHEN (NEW.action = 'upload.request' AND NEW.app_id = '{shop['app_id']}')"
        " EXECUTE FUNCTION test_fail_audit()",
    )
    try:
        status, body = await cluster.api("POST", "/v1/uploads", json={}, headers=bearer(shop["api_key"]))
        assert status == 500 and body["error"]["code"] == "internal_error", body
        assert await sql(cluster, "SELECT 1 FROM images WHERE owner_key_id = %s", shop["key_id"]) == []
    finally:
        await ddl(cluster, "DROP TRIGGER test_fail_audit ON audit_log")
        await ddl(cluster, "DROP FUNCTION test_fail_audit()")
    status, ticket = await cluster.api("POST", "/v1/uploads", json={}, headers=bearer(shop["api_key"]))
    assert status == 201
    assert len(await sql(cluster, "SELECT 1 FROM images WHERE owner_key_id = %s", shop["key_id"])) == 1


async def test_deduplicated_copies_keep_their_own_privacy(cluster: TestCluster) -> None:
    """The same bytes uploaded public then private: every node links the private copy to the public bytes
    (dedupe), and must still refuse it without a signature."""
    data = make_jpeg(seed=60)
    public = await cluster.upload(data, client_ip="3.0.1.10")
    await cluster.wait_ready(public["image_id"])
    await cluster.wait_replicated(public["image_id"])
    private = await cluster.upload(data, client_ip="3.0.1.10", visibility="private")
    await cluster.wait_replicated(private["image_id"])
    for node_id, settings in cluster.node_settings.items():
        url = f"{settings.node.base_url}/i/{private['image_id']}/w300.jpg"
        status, body, _ = await get(cluster, url)
        assert status in (403, 409), (node_id, status)  # never served unsigned (409: not processed yet)
        assert (cluster.store(node_id).image_dir(private["image_id"]) / "private").exists(), node_id
