"""GET /v1/images on a real cluster: every filter, both orders, keyset pages without duplicates or gaps (ties
on the creation time included), limit bounds, refusals naming the parameter, and ownership: an app key
sees its own app's images only, an admin key every app's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import pyvips

from tests.cluster import TestCluster

Params = dict[str, Any] | list[tuple[str, Any]]


def make_image(fmt: str, width: int, height: int, seed: int) -> bytes:
    """A real image in ``fmt`` (noise, so every seed gives different bytes)."""
    image = pyvips.Image.gaussnoise(width, height, mean=100 + seed, sigma=30).cast("uchar")
    image = image.bandjoin([image, image]).copy(interpretation="srgb")
    return bytes(image.write_to_buffer(f".{fmt}"))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def new_app_key(cluster: TestCluster, name: str) -> tuple[str, str]:
    """(api key, app id) of a new app with an `app`-scoped key."""
    status, body = await cluster.api("POST", "/v1/keys", json={"name": name, "scopes": ["app"], "rate_per_s": 0})
    assert status == 201, body
    return body["api_key"], body["app_id"]


async def upload_as(cluster: TestCluster, key: str, data: bytes | None, **fields: Any) -> str:
    """Request an upload with ``key``; PUT ``data`` and wait for `ready` unless it is None (stays `requested`)."""
    status, ticket = await cluster.api("POST", "/v1/uploads", json=fields, headers=bearer(key))
    assert status == 201, ticket
    if data is not None:
        status, body = await cluster.put(ticket["upload_url"], data)
        assert status == 201, body
        await cluster.wait_ready(ticket["image_id"])
    return str(ticket["image_id"])


async def search(cluster: TestCluster, key: str, params: Params | None = None) -> tuple[int, Any]:
    return await cluster.api("GET", "/v1/images", params=params or {}, headers=bearer(key))


async def ids(cluster: TestCluster, key: str, params: Params | None = None) -> list[str]:
    status, body = await search(cluster, key, params)
    assert status == 200, body
    return [image["image_id"] for image in body["images"]]


@pytest.fixture
async def catalog(cluster: TestCluster) -> dict[str, Any]:
    """Two apps' images: app A's six (one only requested, one deleted) and app B's one."""
    key_a, app_a = await new_app_key(cluster, "app-a")
    key_b, app_b = await new_app_key(cluster, "app-b")
    images = {
        "jpeg_cat": await upload_as(
            cluster,
            key_a,
            make_image("jpg", 640, 480, 1),
            tags=["cat", "cute"],
            metadata={"album": "x", "n": 1},
        ),
        "png_private": await upload_as(
            cluster, key_a, make_image("png", 300, 200, 2), tags=["cat"], metadata={"album": "y"}, visibility="private"
        ),
        "jpeg_dog": await upload_as(
            cluster, key_a, make_image("jpg", 1600, 1200, 3), tags=["dog"], metadata={"album": "x", "n": "1"}
        ),
        "webp_dog": await upload_as(cluster, key_a, make_image("webp", 800, 600, 4), tags=["dog", "cute"]),
        "gif_gone": await upload_as(cluster, key_a, make_image("gif", 120, 90, 5), tags=["cat"]),
        "requested": await upload_as(cluster, key_a, None, tags=["cat"]),
        "b_cat": await upload_as(cluster, key_b, make_image("jpg", 640, 480, 6), tags=["cat", "cute"]),
    }
    status, body = await cluster.api("DELETE", f"/v1/images/{images['gif_gone']}", headers=bearer(key_a))
    assert status == 202, body
    return {"key_a": key_a, "app_a": app_a, "key_b": key_b, "app_b": app_b, **images}


async def test_each_filter_on_own_images(cluster: TestCluster, catalog: dict[str, Any]) -> None:
    c, a = catalog, catalog["key_a"]
    live = {c[n] for n in ("jpeg_cat", "png_private", "jpeg_dog", "webp_dog", "requested")}
    assert set(await ids(cluster, a)) == live  # no deleted image, no other app's image
    assert set(await ids(cluster, a, {"tags": "cat"})) == {c["jpeg_cat"], c["png_private"], c["requested"]}
    assert set(await ids(cluster, a, {"tags": "cat,cute"})) == {c["jpeg_cat"]}
    assert set(await ids(cluster, a, [("tags", "dog"), ("tags", "cute")])) == {c["webp_dog"]}  # repeated = one list
    assert set(await ids(cluster, a, {"any_tags": "cute,nothing"})) == {c["jpeg_cat"], c["webp_dog"]}
    assert set(await ids(cluster, a, {"format": "jpeg"})) == {c["jpeg_cat"], c["jpeg_dog"]}
    assert set(await ids(cluster, a, {"format": "jpg,webp"})) == {c["jpeg_cat"], c["jpeg_dog"], c["webp_dog"]}
    assert set(await ids(cluster, a, {"format": "png"})) == {c["png_private"]}
    assert set(await ids(cluster, a, {"min_width": 640})) == {c["jpeg_cat"], c["jpeg_dog"], c["webp_dog"]}
    assert set(await ids(cluster, a, {"max_width": 640})) == {c["jpeg_cat"], c["png_private"]}
    assert set(await ids(cluster, a, {"min_width": 641, "max_width": 1600})) == {c["jpeg_dog"], c["webp_dog"]}
    assert set(await ids(cluster, a, {"min_height": 600, "max_height": 600})) == {c["webp_dog"]}
    assert set(await ids(cluster, a, {"max_height": 480})) == {c["jpeg_cat"], c["png_private"]}
    assert set(await ids(cluster, a, {"status": "requested"})) == {c["requested"]}
    assert set(await ids(cluster, a, {"status": "deleted"})) == {c["gif_gone"]}
    assert set(await ids(cluster, a, {"status": "ready,deleted"})) == live - {c["requested"]} | {c["gif_gone"]}
    assert set(await ids(cluster, a, {"visibility": "private"})) == {c["png_private"]}
    assert c["png_private"] not in await ids(cluster, a, {"visibility": "public"})
    assert set(await ids(cluster, a, {"meta.album": "x"})) == {c["jpeg_cat"], c["jpeg_dog"]}
    # A number in the query matches the JSON number and the string alike; two keys must both match.
    assert set(await ids(cluster, a, {"meta.n": "1"})) == {c["jpeg_cat"], c["jpeg_dog"]}
    assert set(await ids(cluster, a, [("meta.album", "x"), ("meta.n", "1"), ("format", "jpeg")])) == {
        c["jpeg_cat"],
        c["jpeg_dog"],
    }
    assert await ids(cluster, a, {"meta.album": "nope"}) == []
    assert set(await ids(cluster, a, {"tags": "cat", "format": "jpeg", "min_width": 100})) == {c["jpeg_cat"]}

    # Time ranges: created_after inclusive, created_before exclusive; ready times exist for processed images.
    status, body = await search(cluster, a, {"order": "oldest"})
    by_id = {image["image_id"]: image for image in body["images"]}
    first, second = (datetime.fromisoformat(by_id[c[n]]["created_at"]) for n in ("jpeg_cat", "png_private"))
    iso = {"created_after": first.isoformat(), "created_before": second.isoformat()}
    assert await ids(cluster, a, iso) == [c["jpeg_cat"]]
    later = (second + timedelta(microseconds=1)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert c["png_private"] not in await ids(cluster, a, {"created_after": later})
    ready_dog = datetime.fromisoformat(by_id[c["jpeg_dog"]]["ready_at"])
    after_dog = await ids(cluster, a, {"ready_after": ready_dog.isoformat()})
    assert c["jpeg_dog"] in after_dog and c["jpeg_cat"] not in after_dog and c["requested"] not in after_dog
    before_dog = await ids(cluster, a, {"ready_before": ready_dog.isoformat()})
    assert set(before_dog) == {c["jpeg_cat"], c["png_private"]}

    # Every listed image is the object GET /v1/images/{id} answers.
    status, one = await cluster.api("GET", f"/v1/images/{c['jpeg_dog']}", headers=bearer(a))
    listed = {k: v for k, v in by_id[c["jpeg_dog"]].items() if k != "replicas"}  # replication may move on
    assert status == 200 and listed == {k: v for k, v in one.items() if k != "replicas"}
    assert one["format"] == "jpeg" and one["width"] == 1600 and one["tags"] == ["dog"] and one["replicas"]


async def test_ownership_app_keys_see_only_their_app(cluster: TestCluster, catalog: dict[str, Any]) -> None:
    c = catalog
    assert await ids(cluster, c["key_b"]) == [c["b_cat"]]
    assert c["b_cat"] not in await ids(cluster, c["key_a"], {"tags": "cat", "limit": 1000})
    assert await ids(cluster, c["key_b"], {"visibility": "private"}) == []  # A's private image stays unseen
    # An admin key sees every app's images, or one app's with app_id.
    everything = set(await ids(cluster, cluster.api_key, {"tags": "cat,cute"}))
    assert everything == {c["jpeg_cat"], c["b_cat"]}
    assert await ids(cluster, cluster.api_key, {"tags": "cat,cute", "app_id": c["app_b"]}) == [c["b_cat"]]
    # An app key may name only its own app.
    assert await ids(cluster, c["key_b"], {"app_id": c["app_b"]}) == [c["b_cat"]]
    status, body = await search(cluster, c["key_b"], {"app_id": c["app_a"]})
    assert status == 403 and body["error"]["code"] == "forbidden"
    # No key: 401.
    assert cluster.session is not None
    async with cluster.session.get(f"{cluster.query_url}/v1/images") as resp:
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthorized"


async def _all_pages(cluster: TestCluster, key: str, params: dict[str, Any]) -> tuple[list[str], int]:
    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        status, body = await search(cluster, key, {**params, **({"cursor": cursor} if cursor else {})})
        assert status == 200, body
        pages += 1
        assert len(body["images"]) <= params["limit"]
        seen += [image["image_id"] for image in body["images"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen, pages
        assert len(body["images"]) == params["limit"]  # only a full page has a next one


async def test_order_and_keyset_pages(cluster: TestCluster, catalog: dict[str, Any]) -> None:
    a = catalog["key_a"]
    status, body = await search(cluster, a, {"status": "ready,requested,deleted", "limit": 1000})
    listing = body["images"]
    assert status == 200 and len(listing) == 6 and body["next_cursor"] is None
    keys = [(image["created_at"], image["image_id"]) for image in listing]
    assert keys == sorted(keys, reverse=True)  # newest first by default
    # Three images share one creation time: ties are ordered by image id, and no page loses or repeats one.
    tied = sorted(image["image_id"] for image in listing[1:4])
    async with await psycopg.AsyncConnection.connect(cluster.common["database"]["url"], autocommit=True) as conn:
        await conn.execute(
            "UPDATE images SET created_at = (SELECT created_at FROM images WHERE image_id = %s)"
            " WHERE image_id = ANY(%s)",
            (tied[0], tied),
        )
    everything = await ids(cluster, a, {"status": "ready,requested,deleted", "limit": 1000})
    oldest = await ids(cluster, a, {"status": "ready,requested,deleted", "order": "oldest", "limit": 1000})
    assert oldest == everything[::-1] and sorted(everything) == sorted(image["image_id"] for image in listing)
    tied_positions = [everything.index(i) for i in tied]
    assert sorted(tied_positions) == list(range(min(tied_positions), min(tied_positions) + 3))
    assert [everything[p] for p in sorted(tied_positions)] == sorted(tied, reverse=True)
    for order, expected in (("newest", everything), ("oldest", oldest)):
        for limit in (1, 2, 4):
            seen, pages = await _all_pages(
                cluster, a, {"status": "ready,requested,deleted", "order": order, "limit": limit}
            )
            assert seen == expected, (order, limit)
            assert pages == -(-len(expected) // limit)
    # A filter keeps applying on later pages.
    seen, pages = await _all_pages(cluster, a, {"tags": "cat", "limit": 1})
    assert len(seen) == 3 == len(set(seen)) and pages == 3


async def test_limits_and_bad_parameters(cluster: TestCluster, catalog: dict[str, Any]) -> None:
    a = catalog["key_a"]
    status, body = await search(cluster, a, {"limit": 1})
    assert status == 200 and len(body["images"]) == 1 and body["next_cursor"]
    cursor = body["next_cursor"]
    status, body = await search(cluster, a, {"limit": 1000})
    assert status == 200 and len(body["images"]) == 5 and body["next_cursor"] is None
    # Default limit is 100: five images, one page.
    assert (await search(cluster, a))[1]["next_cursor"] is None
    tampered = cursor[:-2] + ("AA" if not cursor.endswith("AA") else "BB")
    flipped_payload = ("B" if cursor[0] != "B" else "C") + cursor[1:]
    bad: list[tuple[Params, str]] = [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"order": "random"}, "order"),
        ({"format": "svg"}, "format"),
        ({"status": "lost"}, "status"),
        ({"visibility": "secret"}, "visibility"),
        ({"visibility": "public,private"}, "visibility"),
        ({"min_width": -1}, "min_width"),
        ({"max_height": "tall"}, "max_height"),
        ({"min_width": 10, "max_width": 5}, "min_width"),
        ({"created_after": "yesterday"}, "created_after"),
        ({"ready_before": "2026-13-45"}, "ready_before"),
        ({"created_after": "2026-02-01", "created_before": "2026-01-01"}, "created_after"),
        ({"tags": "a,,b"}, "tags"),
        ({"any_tags": "x" * 65}, "any_tags"),
        ({"tags": ",".join(f"t{i}" for i in range(21))}, "tags"),
        ({"meta.": "x"}, "meta."),
        ([("meta.k", "1"), ("meta.k", "2")], "meta.k"),
        ([("limit", "1"), ("limit", "2")], "limit"),
        ({"tag": "cat"}, "tag"),
        ({"app_id": "nope"}, "app_id"),
        ({"cursor": "garbage"}, "cursor"),
        ({"cursor": tampered}, "cursor"),
        ({"cursor": flipped_payload}, "cursor"),
        ({"cursor": cursor, "order": "oldest"}, "cursor"),
        ({"tags": "nul\x00byte"}, "tags"),
    ]
    for params, name in bad:
        status, body = await search(cluster, a, params)
        assert status == 400 and body["error"]["code"] == "invalid_request", (params, body)
        assert name in body["error"]["message"], (params, body)
    # A `+` of an offset that arrived as a space (unencoded query) still reads as an offset.
    assert cluster.session is not None
    async with cluster.session.get(
        f"{cluster.query_url}/v1/images?created_after=2020-01-01T00:00:00+00:00", headers=bearer(a)
    ) as resp:
        assert resp.status == 200 and len((await resp.json())["images"]) == 5
