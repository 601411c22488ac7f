"""The dashboard in a real browser: the numbers it shows match the API, a stopped node is shown down."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Browser, Page, expect

from storage_node import keys as node_keys
from tests.browser.conftest import LAPTOP, PHONE
from tests.cluster import TestCluster, make_jpeg


async def _node_values(page: Page) -> dict[str, dict[str, str]]:
    return await page.eval_on_selector_all(
        "article.node",
        """cards => Object.fromEntries(cards.map(c => [c.dataset.nodeId, Object.fromEntries(
               [...c.querySelectorAll('[data-field]')]
                 .map(f => [f.dataset.field, f.dataset.value ?? f.textContent]))]))""",
    )


async def test_dashboard_matches_the_api_and_shows_a_stopped_node_down(cluster: TestCluster, browser: Browser,
                                                                        screenshots: Path) -> None:
    for seed in range(3):
        image = await cluster.upload(make_jpeg(320, 240, seed=seed))
        await cluster.wait_ready(image["image_id"])
        await cluster.wait_replicated(image["image_id"])
    # Wait until every node has reported the uploads and their eager variants in a heartbeat.
    async def counted() -> bool:
        _s, body = await cluster.api("GET", "/v1/nodes")
        live = {node_id: app[node_keys.STORE].usage().used_bytes for node_id, app in cluster.apps.items()
                if node_id != "query"}
        return all(n["objects"] == 3 and n["used_bytes"] == live[n["node_id"]] for n in body["nodes"])

    await cluster.wait_for(counted, "heartbeats with the new objects")
    status, api_nodes = await cluster.api("GET", "/v1/nodes")
    assert status == 200
    expected = {n["node_id"]: n for n in api_nodes["nodes"]}

    context = await browser.new_context(viewport=LAPTOP)
    page = await context.new_page()
    try:
        await page.goto(f"{cluster.query_url}/dashboard#key={cluster.api_key}")
        await page.wait_for_selector("article.node", timeout=10_000)
        assert "#key" not in page.url  # the key left the address bar (kept in sessionStorage)
        shown = await _node_values(page)
        assert set(shown) == set(expected)
        for node_id, node in expected.items():
            assert shown[node_id]["health"] == "healthy"
            assert int(shown[node_id]["used_bytes"]) == node["used_bytes"]
            assert int(shown[node_id]["capacity_bytes"]) == node["capacity_bytes"]
            assert int(shown[node_id]["objects"]) == 3
        assert await page.get_attribute("[data-tile=healthy]", "data-value") == "3"
        total_used = sum(n["used_bytes"] for n in expected.values())
        assert await page.get_attribute("[data-tile=used]", "data-value") == str(total_used)
        await page.screenshot(path=str(screenshots / "dashboard-laptop.png"), full_page=True)

        await cluster.stop_node("eu-west-1")
        await page.wait_for_selector('article.node[data-node-id="eu-west-1"][data-healthy="false"]', timeout=15_000)
        assert await page.text_content('[data-node-id="eu-west-1"] [data-field=health]') == "down"
        assert await page.text_content("[data-testid=overall]") == "1 node down"
        assert await page.get_attribute("[data-tile=healthy]", "data-value") == "2"
        await page.screenshot(path=str(screenshots / "dashboard-node-down.png"), full_page=True)

        await page.set_viewport_size(PHONE)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"]  # readable on a phone: no sideways scrolling of the page
        await page.screenshot(path=str(screenshots / "dashboard-phone.png"), full_page=True)
    finally:
        await context.close()


async def test_dashboard_asks_for_an_admin_key(cluster: TestCluster, browser: Browser) -> None:
    context = await browser.new_context(viewport=LAPTOP)
    page = await context.new_page()
    try:
        await page.goto(f"{cluster.query_url}/dashboard")
        await page.wait_for_selector("#login-form", state="visible")
        assert await page.is_hidden("#main")
        await page.fill("input[name=key]", "not-a-key")
        await page.click("#login-form button")
        await expect(page.locator("#login-error")).to_contain_text("Unknown")
        await page.fill("input[name=key]", cluster.api_key)
        await page.click("#login-form button")
        await page.wait_for_selector("article.node")
        assert await page.is_hidden("#login")
    finally:
        await context.close()
