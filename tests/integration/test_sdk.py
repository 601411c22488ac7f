"""The SDK against a real three-region cluster: a file larger than a chunk streams to the node and comes
back `ready` with the right hash; each kind of refusal surfaces as its typed error with the API's code."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from minicdn import (
    AsyncClient,
    Client,
    InvalidImage,
    MinicdnError,
    NotFound,
    Rejected,
    TooLarge,
    Unauthorized,
    Unsupported,
)
from minicdn.sdk.sources import CHUNK_BYTES
from tests.cluster import TestCluster
from tests.hostile import animated_gif, text_as_jpeg, truncated_jpeg
from tests.minicdn.fakepeer import TrackingFile


async def test_a_file_larger_than_a_chunk_streams_and_becomes_ready(cluster: TestCluster, testdata: Path) -> None:
    data = (testdata / "astronaut_rot8_gps.jpg").read_bytes()
    assert len(data) > CHUNK_BYTES
    source = TrackingFile(data)
    async with AsyncClient(cluster.query_url, cluster.api_key) as cdn:
        image = await cdn.upload(source, filename="astronaut.jpg", tags=["sdk"], metadata={"n": 1}, timeout=30)
        assert (await cdn.get(image.id)).status == "ready"
    assert len(source.reads) >= 2 and max(source.reads) <= CHUNK_BYTES and -1 not in source.reads
    assert (image.status, image.bytes, image.sha256) == ("ready", len(data), hashlib.sha256(data).hexdigest())
    assert (image.width, image.height) == (2048, 1536)  # as displayed: EXIF orientation 8 applied
    assert image.tags == ("sdk",) and image.metadata == {"n": 1} and image.created_at is not None
    states = {r.region: r.state for r in image.replicas}
    assert set(states) == {"us-east", "eu-west", "ap-southeast"}
    verified = [r.node_id for r in image.replicas if r.state == "ok"]
    assert verified and all(cluster.disk_sha256(node, image.id) == image.sha256 for node in verified)


async def test_refusals_are_typed_errors_with_the_api_code(
    cluster: TestCluster, testdata: Path, tmp_path: Path
) -> None:
    huge = tmp_path / "huge.jpg"
    with huge.open("wb") as f:  # sparse: the announced size alone is refused, nothing is sent
        f.truncate(cluster.node_settings["us-east-1"].limits.max_upload_bytes + 1)

    def refusals() -> dict[str, MinicdnError]:
        caught: dict[str, MinicdnError] = {}
        with Client(cluster.query_url, cluster.api_key) as cdn:
            for name, source, kind in (
                ("text", text_as_jpeg(), Unsupported),
                ("frames", animated_gif(501), InvalidImage),
                ("huge", huge, TooLarge),
                ("cut", truncated_jpeg(testdata / "chelsea_gps.jpg"), Rejected),
            ):
                with pytest.raises(kind) as exc:
                    cdn.upload(source, timeout=30)
                caught[name] = exc.value
            with pytest.raises(NotFound) as missing:
                cdn.get("a" * 22)
            caught["missing"] = missing.value
        with Client(cluster.query_url, "not-a-key") as stranger, pytest.raises(Unauthorized) as denied:
            stranger.upload(b"\xff\xd8\xff")
        caught["denied"] = denied.value
        return caught

    caught = await asyncio.to_thread(refusals)  # the cluster runs on this loop; the sync Client on its own
    got = {name: (type(e).__name__, e.status, e.code) for name, e in caught.items()}
    assert got == {
        "text": ("Unsupported", 415, "unsupported_type"),
        "frames": ("InvalidImage", 422, "invalid_image"),
        "huge": ("TooLarge", 413, "too_large"),
        "cut": ("Rejected", None, "rejected"),
        "missing": ("NotFound", 404, "not_found"),
        "denied": ("Unauthorized", 401, "unauthorized"),
    }
    assert all(isinstance(caught[n], Rejected) for n in ("text", "frames", "huge", "cut"))
    assert "truncated" in caught["cut"].args[0]
    # Refused at the PUT or by processing: the error names the image, and the cluster has it `rejected`.
    for name in ("text", "frames", "cut"):
        image_id = caught[name].image_id
        assert image_id is not None
        status, body = await cluster.api("GET", f"/v1/images/{image_id}")
        assert (status, body["status"]) == (200, "rejected"), body
    assert caught["huge"].image_id is None  # refused before an image was created
