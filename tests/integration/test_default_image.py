"""Default images through a real cluster: an app's default stands in for its missing (deleted, rejected)
public images in URL lookups, `/img` redirects and node URLs, in the same variant, marked and cached only
briefly; `default=` names another one of the same app; private and quarantined images never fall back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from minicdn.embedded import EmbeddedNats
from tests.cluster import TestCluster, make_jpeg

FALLBACK = "X-Minicdn-Fallback"


@pytest.fixture
async def cluster(
    tmp_path: Path, database_url: str, nats_server: EmbeddedNats, geoip_db: str
) -> AsyncIterator[TestCluster]:
    hook = tmp_path / "moderate.sh"  # holds PNGs for a human look, passes the rest
    hook.write_text('#!/bin/sh\ncase "$MINICDN_CONTENT_TYPE" in image/png) echo "held"; exit 1;; esac\nexit 0\n')
    hook.chmod(0o755)
    c = TestCluster(tmp_path / "cluster", database_url, nats_server.url, geoip_db)
    c.common["moderation"] = {"command": str(hook)}
    c.common["fallback"] = {"max_age_s": 30}
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


async def fetch(cluster: TestCluster, url: str, **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
    assert cluster.session is not None
    async with cluster.session.get(url, headers=headers, allow_redirects=False) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


async def ready(cluster: TestCluster, seed: int, **fields: Any) -> str:
    up = await cluster.upload(make_jpeg(320, 240, seed=seed), **fields)
    await cluster.wait_ready(up["image_id"])
    await cluster.wait_replicated(up["image_id"])
    return str(up["image_id"])


def node_url(cluster: TestCluster, node_id: str, image_id: str, variant: str) -> str:
    return f"{cluster.node_settings[node_id].node.base_url}/i/{image_id}/{variant}"


async def other_app_key(cluster: TestCluster) -> dict[str, str]:
    status, body = await cluster.api("POST", "/v1/keys", json={"name": "other app"})
    assert status == 201, body
    return {"Authorization": f"Bearer {body['api_key']}"}


async def gone_from_disk(cluster: TestCluster, image_id: str) -> None:
    await cluster.wait_for(
        lambda: not any(image_id in str(p) for n in cluster.node_settings for p in cluster.files_under(n, "objects")),
        f"{image_id}'s files removed",
        10,
    )


def assert_fallback(headers: CIMultiDict[str]) -> None:
    assert headers[FALLBACK] == "default"
    assert headers["Cache-Control"] == "public, max-age=30"  # short and never immutable


async def test_setting_the_default_image(cluster: TestCluster) -> None:
    status, body = await cluster.api("GET", "/v1/apps/default-image")
    assert status == 200 and body["default_image_id"] is None
    default = await ready(cluster, 1)
    private = await ready(cluster, 2, visibility="private")
    ticket = await cluster.request_upload()
    other = await other_app_key(cluster)
    status, ticket_other = await cluster.api("POST", "/v1/uploads", json={}, headers=other)
    assert status == 201
    status, ticket_other_private = await cluster.api(
        "POST", "/v1/uploads", json={"visibility": "private"}, headers=other
    )
    assert status == 201
    for image_id, want in (
        ("aaaaaaaaaaaaaaaaaaaaaa", (404, "not_found")),
        (private, (409, "not_public")),
        (ticket["image_id"], (409, "not_ready")),
        (ticket_other["image_id"], (403, "forbidden")),  # another app's public image
        (ticket_other_private["image_id"], (404, "not_found")),  # another app's private image: not revealed
    ):
        status, body = await cluster.api("PUT", "/v1/apps/default-image", json={"image_id": image_id})
        assert (status, body["error"]["code"]) == want, (image_id, body)
    for bad in ({}, {"image_id": "../x"}, {"image_id": 7}):
        status, body = await cluster.api("PUT", "/v1/apps/default-image", json=bad)
        assert status == 400 and body["error"]["code"] == "invalid_request", bad

    status, body = await cluster.api("PUT", "/v1/apps/default-image", json={"image_id": default})
    assert status == 200 and body["default_image_id"] == default, body
    status, body = await cluster.api("GET", "/v1/apps/default-image")
    assert status == 200 and body["default_image_id"] == default
    status, body = await cluster.api("GET", "/v1/apps/default-image", headers=other)  # each app its own
    assert status == 200 and body["default_image_id"] is None
    status, body = await cluster.api("PUT", "/v1/apps/default-image", json={"image_id": None})
    assert status == 200 and body["default_image_id"] is None


async def test_missing_and_deleted_images_fall_back_to_the_default(cluster: TestCluster) -> None:
    default = await ready(cluster, 10)
    deleted = await ready(cluster, 11)
    status, _ = await cluster.api("PUT", "/v1/apps/default-image", json={"image_id": default})
    assert status == 200
    # Served normally while it exists: no fallback marker, the image's own URL.
    status, body = await cluster.api("GET", f"/v1/images/{deleted}/url", params={"w": 300, "fmt": "jpeg"})
    assert status == 200 and "fallback" not in body and f"/i/{deleted}/" in body["url"]
    status, _ = await cluster.api("DELETE", f"/v1/images/{deleted}")
    assert status == 202
    await gone_from_disk(cluster, deleted)
    rejected = await cluster.request_upload()
    status, _ = await cluster.put(rejected["upload_url"], b"plain text, not an image\n" * 40)
    assert status == 415

    for missing in (deleted, rejected["image_id"]):
        # URL lookups: the default's variant for the same box and format.
        assert cluster.session is not None
        async with cluster.session.get(
            f"{cluster.query_url}/v1/images/{missing}/url", params={"w": 300, "fmt": "webp"}
        ) as resp:
            assert resp.status == 200
            assert_fallback(CIMultiDict(resp.headers))
            body = await resp.json()
        assert body["fallback"] == "default" and body["default_image_id"] == default
        assert body["variant"] == "w300.webp" and body["url"].endswith(f"/i/{default}/w300.webp")
        # /img redirects there, marked too.
        status, headers, _ = await fetch(cluster, f"{cluster.query_url}/img/{missing}?w=300&fmt=webp")
        assert status == 302 and headers["Location"].endswith(f"/i/{default}/w300.webp")
        assert headers[FALLBACK] == "default"
        # A node URL of the missing image: 307 to the same variant of the default, marked and short-lived;
        # following it gives exactly the default's bytes.
        for node_id in cluster.node_settings:
            status, headers, _ = await fetch(cluster, node_url(cluster, node_id, missing, "w300.jpg"))
            assert status == 307, (node_id, status)
            assert_fallback(headers)
            assert headers["Location"].endswith(f"/i/{default}/w300.jpg")
            status, got_headers, got = await fetch(cluster, headers["Location"])
            assert status == 200 and got_headers["Content-Type"] == "image/jpeg"
            assert "immutable" in got_headers["Cache-Control"]  # the default's own URL is an ordinary one
            status, _, direct = await fetch(cluster, node_url(cluster, node_id, default, "w300.jpg"))
            assert status == 200 and got == direct
    # Originals and sizes an unsigned URL may not ask for never fall back.
    status, headers, _ = await fetch(cluster, node_url(cluster, "us-east-1", deleted, "w301.jpg"))
    assert status == 400 and FALLBACK not in headers
    status, headers, _ = await fetch(cluster, node_url(cluster, "us-east-1", deleted, "original"))
    assert status == 403 and FALLBACK not in headers
    status, body = await cluster.api("GET", f"/v1/images/{deleted}/url", params={"variant": "original"})
    assert status == 404 and body["error"]["code"] == "not_found"

    # Without a default, a deleted image is a plain 404 again.
    status, _ = await cluster.api("PUT", "/v1/apps/default-image", json={"image_id": None})
    assert status == 200
    status, body = await cluster.api("GET", f"/v1/images/{deleted}/url")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, headers, _ = await fetch(cluster, node_url(cluster, "eu-west-1", deleted, "w300.jpg"))
    assert status == 404 and FALLBACK not in headers


async def test_default_parameter_rules(cluster: TestCluster) -> None:
    app_default = await ready(cluster, 20)
    named = await ready(cluster, 21)
    private = await ready(cluster, 22, visibility="private")
    deleted = await ready(cluster, 23)
    other = await other_app_key(cluster)
    status, up = await cluster.api("POST", "/v1/uploads", json={}, headers=other)
    assert status == 201
    status, _ = await cluster.put(up["upload_url"], make_jpeg(320, 240, seed=24))
    assert status == 201
    foreign = str(up["image_id"])
    await cluster.wait_ready(foreign)
    await cluster.wait_replicated(foreign)
    status, _ = await cluster.api("DELETE", f"/v1/images/{deleted}")
    assert status == 202
    await gone_from_disk(cluster, deleted)

    async def stand_in(default: str | None) -> str | None:
        params: dict[str, Any] = {"w": 150, "fmt": "png"}
        if default is not None:
            params["default"] = default
        status, body = await cluster.api("GET", f"/v1/images/{deleted}/url", params=params)
        if status == 404:
            return None
        assert status == 200, body
        return str(body["default_image_id"])

    # No app default: only a usable `default=` falls back.
    assert await stand_in(None) is None
    assert await stand_in(named) == named
    assert await stand_in(private) is None  # not public
    assert await stand_in(foreign) is None  # another app's
    assert await stand_in(deleted) is None  # itself
    status, body = await cluster.api("GET", f"/v1/images/{deleted}/url", params={"default": "nope"})
    assert status == 400 and body["error"]["code"] == "invalid_request"
    # With an app default, `default=` wins when usable and the app's default applies otherwise.
    status, _ = await cluster.api("PUT", "/v1/apps/default-image", json={"image_id": app_default})
    assert status == 200
    assert await stand_in(None) == app_default
    assert await stand_in(named) == named
    assert await stand_in(foreign) == app_default
    # Nodes apply the same rules.
    url = node_url(cluster, "ap-southeast-1", deleted, "w150.png")
    for query, want in ((f"?default={named}", named), (f"?default={foreign}", app_default), ("", app_default)):
        status, headers, _ = await fetch(cluster, url + query)
        assert status == 307 and headers["Location"].endswith(f"/i/{want}/w150.png"), (query, headers)
    # A `default=` on an image that exists changes nothing.
    status, body = await cluster.api("GET", f"/v1/images/{named}/url", params={"default": app_default})
    assert status == 200 and "fallback" not in body and f"/i/{named}/" in body["url"]
    # An unknown id has no app to take a default from, whatever the request names.
    status, body = await cluster.api("GET", "/v1/images/aaaaaaaaaaaaaaaaaaaaaa/url", params={"default": named})
    assert status == 404 and body["error"]["code"] == "not_found"


async def test_private_and_quarantined_images_never_fall_back(cluster: TestCluster, testdata: Path) -> None:
    default = await ready(cluster, 30)
    status, _ = await cluster.api("PUT", "/v1/apps/default-image", json={"image_id": default})
    assert status == 200
    private = await ready(cluster, 31, visibility="private")
    held = await cluster.upload((testdata / "coins_gray.png").read_bytes())
    await cluster.wait_ready(held["image_id"], status="quarantined")
    other = await other_app_key(cluster)

    # A private image that exists: as before (signed URLs for its app; nothing for others).
    status, body = await cluster.api("GET", f"/v1/images/{private}/url", headers=other)
    assert status == 404 and body["error"]["code"] == "not_found"
    status, headers, _ = await fetch(cluster, node_url(cluster, "us-east-1", private, "w150.jpg"))
    assert status == 403 and FALLBACK not in headers
    status, headers, _ = await fetch(cluster, f"{cluster.query_url}/img/{private}")  # no key: not revealed
    assert status == 404 and FALLBACK not in headers
    # Deleted, it answers exactly like an id that never existed: no default, to its app or anyone else.
    status, _ = await cluster.api("DELETE", f"/v1/images/{private}")
    assert status == 202
    await gone_from_disk(cluster, private)
    unknown = "aaaaaaaaaaaaaaaaaaaaaa"
    for image_id in (private, unknown):
        for as_app in ({}, other):  # its own app's key (the cluster's), then another app's
            status, body = await cluster.api(
                "GET", f"/v1/images/{image_id}/url", params={"default": default}, headers=as_app
            )
            assert status == 404 and body["error"]["code"] == "not_found", (image_id, body)
        status, headers, _ = await fetch(cluster, f"{cluster.query_url}/img/{image_id}?default={default}")
        assert status == 404 and FALLBACK not in headers
        status, headers, _ = await fetch(cluster, node_url(cluster, "eu-west-1", image_id, "w150.jpg"))
        assert status == 404 and FALLBACK not in headers
    # Quarantined: held for a decision, never replaced by the default.
    status, body = await cluster.api("GET", f"/v1/images/{held['image_id']}/url")
    assert status == 409 and body["error"]["code"] == "not_ready"
    status, headers, _ = await fetch(cluster, node_url(cluster, held["node_id"], held["image_id"], "w150.jpg"))
    assert status == 404 and FALLBACK not in headers
