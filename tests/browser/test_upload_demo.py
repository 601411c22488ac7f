"""The upload demo page end to end in a real browser: signed URL, PUT to the node with progress,
status polling while the other regions copy it, and the image shown from its nearest node."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from playwright.async_api import Browser, expect

from tests.browser.conftest import LAPTOP, PHONE
from tests.cluster import TestCluster


async def _demo_cluster(cluster: TestCluster) -> str:
    """Serve a second query-service app with the demo turned on (the fixture's has it off)."""
    from common.procs import free_port
    from query_service.app import create_app

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = cluster.settings(query={"port": port, "public_url": url, "node_refresh_s": 0.3, "upload_demo": True})
    await cluster._serve("query-demo", create_app(settings), port)
    return url


async def test_upload_demo_end_to_end(
    cluster: TestCluster, browser: Browser, testdata: Path, screenshots: Path
) -> None:
    url = await _demo_cluster(cluster)
    context = await browser.new_context(viewport=LAPTOP)
    page = await context.new_page()
    try:
        await page.goto(f"{url}/upload-demo#key={cluster.api_key}")
        await page.wait_for_selector("#upload-form", state="visible")
        await page.set_input_files("#file", str(testdata / "chelsea_gps.jpg"))
        await page.click("#go")
        try:
            await page.wait_for_selector("#result[data-loaded=true]", timeout=90_000)
        except Exception:
            await page.screenshot(path=str(screenshots / "upload-demo-failure.png"), full_page=True)
            raise
        image_id = (await page.text_content("[data-testid=image-id]") or "").strip()
        assert await page.get_attribute("#progress", "value") == "100"
        assert await page.text_content("[data-testid=error]") == ""
        # What the page shows is what the API says.
        status, body = await cluster.api("GET", f"/v1/images/{image_id}")
        assert status == 200 and body["bytes"] == (testdata / "chelsea_gps.jpg").stat().st_size
        assert {r["state"] for r in body["replicas"]} == {"ok"} and len(body["replicas"]) == 3
        replicas_text = await page.text_content("[data-testid=replicas]") or ""
        assert replicas_text.count(": ok") == 3
        natural: Any = await page.eval_on_selector("#result", "img => [img.naturalWidth, img.naturalHeight]")
        assert natural[0] > 0 and natural[1] > 0
        src = await page.get_attribute("#result", "src")
        assert src and f"/i/{image_id}/" in src
        await page.screenshot(path=str(screenshots / "upload-demo-laptop.png"), full_page=True)
        await page.set_viewport_size(PHONE)
        await page.screenshot(path=str(screenshots / "upload-demo-phone.png"), full_page=True)
    finally:
        await context.close()


async def test_upload_demo_shows_the_nodes_rejection(cluster: TestCluster, browser: Browser, tmp_path: Path) -> None:
    url = await _demo_cluster(cluster)
    bogus = tmp_path / "notes.png"
    bogus.write_bytes(b"this is not an image at all" * 100)
    context = await browser.new_context(viewport=LAPTOP)
    page = await context.new_page()
    try:
        await page.goto(f"{url}/upload-demo#key={cluster.api_key}")
        await page.set_input_files("#file", str(bogus))
        await page.click("#go")
        await expect(page.locator("[data-testid=error]")).to_contain_text("unsupported_type")
        assert await page.is_hidden("#result")
    finally:
        await context.close()


async def test_upload_demo_is_off_unless_configured(cluster: TestCluster) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{cluster.query_url}/upload-demo") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"
