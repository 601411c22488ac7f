"""The dashboard in a real browser: the numbers it shows match the API, a stopped node is shown down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, Route, expect

from tests.browser.conftest import LAPTOP, PHONE
from tests.cluster import TestCluster, make_jpeg


async def _node_values(page: Page) -> dict[str, dict[str, str]]:
    values: dict[str, dict[str, str]] = await page.eval_on_selector_all(
        "article.node",
        """cards => Object.fromEntries(cards.map(c => [c.dataset.nodeId, Object.fromEntries(
               [...c.querySelectorAll('[data-field]')]
                 .map(f => [f.dataset.field, f.dataset.value ?? f.textContent]))]))""",
    )
    return values


CHART_SERIES = {
    "rates": ("requests_per_s", "uploads_per_s", "replicated_per_s"),
    "used": ("used_bytes",),
    "lag": ("replication_lag_p50_s", "replication_lag_max_s"),
    "backlog": ("pending_replicas",),
}


async def _charts_drawn(page: Page, cluster: TestCluster) -> None:
    """Each chart is an SVG with a title, axis labels and a line of several points per series, as many points
    as the history in the JSON holds; the uploads appear as a rise of the upload rate."""

    async def two_points() -> bool:  # the history is sampled once per stats interval
        _status, doc = await cluster.api("GET", "/v1/dashboard")
        return len(doc["history"]["t"]) >= 2

    await cluster.wait_for(two_points, "two history points", timeout_s=15)
    await page.wait_for_function(
        """series => Object.entries(series).every(([chart, names]) => names.every(name => {
               const g = document.querySelector(`svg.chart[data-chart=${chart}] g[data-series=${name}]`);
               return g && +g.dataset.points >= 2 && g.querySelector('polyline') !== null; }))""",
        arg=CHART_SERIES,
        timeout=15_000,
    )
    charts: list[dict[str, Any]] = await page.eval_on_selector_all(
        "svg.chart",
        """svgs => svgs.map(s => ({
               id: s.dataset.chart, role: s.getAttribute('role'), title: s.querySelector('title')?.textContent,
               labelled: (s.getAttribute('aria-labelledby') || '').split(' ').every(id => document.getElementById(id)),
               axes: [...s.querySelectorAll('.axis-label')].map(t => t.textContent),
               ticks: s.querySelectorAll('.grid text').length,
               width: s.getBoundingClientRect().width,
               uploads: s.querySelector('g[data-series=uploads_per_s] polyline')?.getAttribute('points') ?? ''}))""",
    )
    assert [c["id"] for c in charts] == list(CHART_SERIES)
    units = {"rates": "per second", "used": "bytes", "lag": "seconds", "backlog": "copies"}
    for chart in charts:
        assert chart["role"] == "img" and chart["labelled"] and chart["width"] > 200
        assert chart["title"] and units[chart["id"]] in chart["title"]
        assert chart["axes"] == ["time (local)", units[chart["id"]]] and chart["ticks"] >= 4
    # Uploads happened in this history: some point of the upload rate sits above the x axis (SVG y grows down).
    rates = next(c for c in charts if c["id"] == "rates")
    ys = [float(p.split(",")[1]) for p in rates["uploads"].split()]
    assert min(ys) < max(ys)


async def test_dashboard_matches_the_api_and_shows_a_stopped_node_down(
    cluster: TestCluster, browser: Browser, screenshots: Path
) -> None:
    for seed in range(3):
        image = await cluster.upload(make_jpeg(320, 240, seed=seed))
        await cluster.wait_replicated(image["image_id"])
        await cluster.wait_ready(image["image_id"])

    context = await browser.new_context(viewport=LAPTOP)
    page = await context.new_page()
    try:
        await page.goto(f"{cluster.query_url}/dashboard#key={cluster.api_key}")
        await page.wait_for_selector("article.node", timeout=10_000)
        assert "#key" not in page.url  # the key left the address bar (kept in sessionStorage)

        async def page_matches_api() -> bool:
            # Both sides read the same heartbeats, the page every 3 s: compare until a refresh has caught up.
            status, api_nodes = await cluster.api("GET", "/v1/nodes")
            assert status == 200
            shown = await _node_values(page)
            checks.clear()
            checks.update(expected={n["node_id"]: n for n in api_nodes["nodes"]}, shown=shown)
            return set(shown) == set(checks["expected"]) and all(
                shown[i]["health"] == "healthy"
                and int(shown[i]["used_bytes"]) == n["used_bytes"]
                and int(shown[i]["capacity_bytes"]) == n["capacity_bytes"]
                and int(shown[i]["objects"]) == 3
                for i, n in checks["expected"].items()
            )

        checks: dict[str, Any] = {}
        await cluster.wait_for(page_matches_api, "the dashboard to show what /v1/nodes says", timeout_s=20)
        assert await page.get_attribute("[data-tile=healthy]", "data-value") == "3"
        total_used = sum(int(n["used_bytes"]) for n in checks["shown"].values())
        assert await page.get_attribute("[data-tile=used]", "data-value") == str(total_used)
        await _charts_drawn(page, cluster)
        await page.reload()  # the history is kept by the server: a reload draws it again at once
        await page.wait_for_selector("svg.chart[data-chart=used] polyline", timeout=10_000)
        await _charts_drawn(page, cluster)
        await page.screenshot(path=str(screenshots / "dashboard-laptop.png"), full_page=True)

        await cluster.stop_node("eu-west-1")
        await page.wait_for_selector('article.node[data-node-id="eu-west-1"][data-healthy="false"]', timeout=15_000)
        assert await page.text_content('[data-node-id="eu-west-1"] [data-field=health]') == "down"
        assert await page.text_content("[data-testid=overall]") == "1 node down"
        assert await page.get_attribute("[data-tile=healthy]", "data-value") == "2"
        await page.screenshot(path=str(screenshots / "dashboard-node-down.png"), full_page=True)

        await page.set_viewport_size(PHONE)
        # The charts are redrawn to the phone's width (text at its real size, not a shrunken laptop drawing).
        await page.wait_for_function(
            "[...document.querySelectorAll('svg.chart')].every(s => +s.getAttribute('width') <= window.innerWidth - 40)"
        )
        await _charts_drawn(page, cluster)
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


async def test_dashboard_shows_control_plane_fields_and_escapes_text(
    cluster: TestCluster, browser: Browser, screenshots: Path
) -> None:
    """Fields the control plane adds (days until full, node states, events) show when the JSON has them;
    text from the database is shown as text, never run as markup."""
    real: dict[str, Any] = {}

    async def some_history() -> bool:
        status, doc = await cluster.api("GET", "/v1/dashboard")
        assert status == 200
        real.update(doc)
        return len(doc["history"]["t"]) >= 2

    await cluster.wait_for(some_history, "a few seconds of history for the charts")
    doc = dict(real)
    doc["nodes"] = [dict(n) for n in real["nodes"]]
    doc["nodes"][0].update(days_until_full=5.5, state="readonly")
    doc["sets"] = [{**real["sets"][0], "state": "closed", "days_until_full": 5.5}]
    doc["summary"] = {**real["summary"], "days_until_full": 5.5}
    # Once the capacity monitor knows the growth, the used-space chart projects it past "now".
    doc["history"] = {**real["history"], "forecast": {"growth_bytes_per_day": 2e9, "days_until_full": 5.5}}
    doc["events"] = [
        {
            "created_at": "2026-11-23T10:00:00Z",
            "kind": "new_set",
            "state": "succeeded",
            "set_id": "set-2",
            "node_id": None,
            "reason": "<img src=x onerror=window.__pwned=1> set-1 at 81 %",
            "outcome": "3 nodes",
        }
    ]

    context = await browser.new_context(viewport=LAPTOP)
    page = await context.new_page()

    async def fulfil(route: Route) -> None:
        await route.fulfill(json=doc)

    try:
        await page.route("**/v1/dashboard", fulfil)
        await page.goto(f"{cluster.query_url}/dashboard#key={cluster.api_key}")
        await page.wait_for_selector("#events table")
        first = doc["nodes"][0]["node_id"]
        await expect(page.locator(f'[data-node-id="{first}"] [data-field=days_until_full]')).to_have_text("5.5 days")
        await expect(page.locator(f'[data-node-id="{first}"] [data-field=state]')).to_have_text("readonly")
        await expect(page.locator("[data-tile=days] .value")).to_have_text("5.5 days")
        await expect(page.locator("[data-set-id=set-1]")).to_contain_text("full in 5.5 days")
        await expect(page.locator("#events td").nth(5)).to_have_text(doc["events"][0]["reason"])
        assert await page.evaluate("window.__pwned === undefined")
        assert await page.locator("#events img").count() == 0
        forecast = page.locator("svg.chart[data-chart=used] g[data-series=forecast] polyline")
        await expect(forecast).to_have_count(1)
        await expect(page.locator("[data-chart=used] li[data-series=forecast]")).to_contain_text(
            "+2.00 GB/day · soonest node full in 5.5 days"
        )
        await page.screenshot(path=str(screenshots / "dashboard-control-plane-fields.png"), full_page=True)
    finally:
        await context.close()
