"""The browser upload module (`/assets/minicdn-upload.js`) in Chromium, as an app uses it: the app's page
on its own origin imports the module from the query service, its backend (holding the API key) gets the
ticket, and the page uploads with no key: PUT to a real node with progress events, then polls the
ticket's signed status URL across origins until `ready`; refused files reject with the API's code.

The app server below is the only stand-in: it plays the app's backend and, for the retry tests, a
proxy in front of the real node that fails the first attempts the way a network does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page

from common.procs import free_port
from tests.browser.conftest import LAPTOP
from tests.cluster import TestCluster

PAGE = """<!doctype html><meta charset="utf-8"><title>an app</title>
<script type="module">
import * as minicdn from "{query}/assets/minicdn-upload.js";
window.minicdn = minicdn;
document.title = "loaded";
</script>"""

# Runs in the page: fetch a file the app serves, get a ticket from the app's backend, upload it with the
# module and report every event and the outcome.
UPLOAD = """async ({ file, name, type, ticketFields, fault, options }) => {
  let blob;
  if (file.startsWith("zeros:")) blob = new Blob([new Uint8Array(Number(file.slice(6)))]);
  else blob = await (await fetch(file)).blob();
  const upload = new File([blob], name, { type });
  const resp = await fetch("/ticket", { method: "POST", body: JSON.stringify({ ...ticketFields, fault }) });
  const ticket = await resp.json();
  const events = [];
  try {
    const image = await window.minicdn.upload(ticket, upload, {
      onProgress: (d) => events.push(["progress", d.loaded, d.total, d.attempt]),
      onStatus: (d) => events.push(["status", d.status]),
      onRetry: (d) => events.push(["retry", d.phase, d.attempt, d.error.code, d.error.status]),
      backoffMs: 50, pollIntervalMs: 200, timeoutMs: 60000, ...options,
    });
    return { ok: true, image, events, ticket, size: upload.size };
  } catch (e) {
    const error = { name: e.name, code: e.code, status: e.status, message: e.message,
                    typed: e instanceof window.minicdn.UploadError };
    return { ok: false, error, events, ticket, size: upload.size };
  }
}"""


@dataclass
class AppServer:
    """An app on its own origin: its page, its backend's ticket endpoint, and a fault-injecting proxy."""

    cluster: TestCluster
    testdata: Path
    url: str = ""
    faults: dict[str, list[str]] = field(default_factory=dict)  # image id -> faults still to inject
    proxied: list[tuple[str, int]] = field(default_factory=list)  # (fault or "forward", status) per PUT

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE.replace("{query}", self.cluster.query_url), content_type="text/html")

    async def file(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(self.testdata / request.match_info["name"])

    async def ticket(self, request: web.Request) -> web.Response:
        """The app's backend: the API key stays here; the page gets the ticket only."""
        fields: dict[str, Any] = json.loads(await request.text())
        plan = fields.pop("fault", None)
        status, ticket = await self.cluster.api("POST", "/v1/uploads", json=fields)
        assert status == 201, ticket
        if plan:  # route this upload's PUTs through the proxy, which injects the faults first
            self.faults[ticket["image_id"]] = list(plan)
            ticket["upload_url"] = f"{self.url}/proxy?" + urlencode({"to": ticket["upload_url"]})
        return web.json_response(ticket)

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        target = request.query["to"]
        body = await request.read()
        image_id = target.split("/upload/", 1)[1].split("?", 1)[0]
        pending = self.faults.get(image_id, [])
        fault = pending.pop(0) if pending else "forward"
        if fault == "503":
            self.proxied.append((fault, 503))
            return web.json_response(
                {"error": {"code": "unavailable", "message": "try again"}}, status=503, headers={"Retry-After": "0"}
            )
        if fault == "drop":  # the connection dies before an answer: the browser sees a network error
            self.proxied.append((fault, 0))
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        assert self.cluster.session is not None
        headers = {"Content-Type": request.headers.get("Content-Type", "application/octet-stream")}
        async with self.cluster.session.put(target, data=body, headers=headers) as resp:
            answer, status = await resp.read(), resp.status
        self.proxied.append((fault, status))
        if fault == "lost-201":  # the node committed, but its answer never reaches the browser
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        return web.Response(body=answer, status=status, content_type="application/json")


@web.middleware
async def no_keep_alive(request: web.Request, handler: Any) -> web.StreamResponse:
    """One connection per request: Chromium silently re-sends a request whose reused keep-alive connection
    died, which would hide the injected drops from the module."""
    response: web.StreamResponse = await handler(request)
    response.force_close()
    return response


@pytest.fixture
async def app_server(cluster: TestCluster, testdata: Path) -> AsyncIterator[AppServer]:
    server = AppServer(cluster, testdata)
    app = web.Application(client_max_size=64 * 1024**2, middlewares=[no_keep_alive])
    app.router.add_get("/", server.page)
    app.router.add_get("/files/{name}", server.file)
    app.router.add_post("/ticket", server.ticket)
    app.router.add_put("/proxy", server.proxy)
    port = free_port()
    server.url = f"http://127.0.0.1:{port}"
    await cluster._serve("app", app, port)  # a different port: another origin than the query service
    yield server


@pytest.fixture
async def page(browser: Browser, app_server: AppServer) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport=LAPTOP)
    page = await context.new_page()
    try:
        await page.goto(app_server.url + "/")
        await page.wait_for_function("document.title === 'loaded'")
        yield page
    finally:
        await context.close()


async def run(page: Page, **arg: Any) -> dict[str, Any]:
    arg.setdefault("type", "image/jpeg")
    arg.setdefault("ticketFields", {})
    arg.setdefault("fault", None)
    arg.setdefault("options", {})
    result: dict[str, Any] = await page.evaluate(UPLOAD, arg)
    return result


def statuses(result: dict[str, Any]) -> list[str]:
    return [e[1] for e in result["events"] if e[0] == "status"]


def progress(result: dict[str, Any]) -> list[list[Any]]:
    return [e for e in result["events"] if e[0] == "progress"]


async def test_private_upload_reaches_ready_with_progress_and_no_key(
    page: Page, cluster: TestCluster, testdata: Path
) -> None:
    result = await run(
        page,
        file="/files/astronaut_rot8_gps.jpg",
        name="astronaut.jpg",
        ticketFields={"visibility": "private", "filename": "astronaut.jpg"},
        options={"waitForReplicasMs": 30000},
    )
    assert result["ok"], result
    size = (testdata / "astronaut_rot8_gps.jpg").stat().st_size
    assert result["size"] == size
    steps = progress(result)
    assert steps and steps[-1][1:] == [size, size, 1]
    assert all(a[1] <= b[1] for a, b in zip(steps, steps[1:], strict=False))  # never goes backwards
    seen = statuses(result)
    assert seen[:2] == ["requested", "uploaded"] and seen[-1] == "ready"
    image = result["image"]
    assert image["status"] == "ready" and image["visibility"] == "private" and image["bytes"] == size
    assert {r["state"] for r in image["replicas"]} == {"ok"} and len(image["replicas"]) == 3
    # The page read a private image's status without a key: only through the ticket's signature.
    assert "sig=" in result["ticket"]["signed_status_url"]
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(f"{cluster.query_url}/v1/images/{image['image_id']}") as resp:
            assert resp.status == 404
    status, body = await cluster.api("GET", f"/v1/images/{image['image_id']}")
    assert status == 200 and body["sha256"] == image["sha256"]


async def test_text_file_named_jpg_is_refused_with_the_api_code(page: Page, cluster: TestCluster) -> None:
    result = await run(page, file="/", name="notes.jpg")  # the app's HTML page, named .jpg
    assert not result["ok"]
    assert result["error"] == {
        "name": "UploadError",
        "code": "unsupported_type",
        "status": 415,
        "message": result["error"]["message"],
        "typed": True,
    }
    assert not [e for e in result["events"] if e[0] == "retry"]  # a refusal is never retried
    assert statuses(result) == ["requested"]
    ticket = result["ticket"]
    status, body = await cluster.api("GET", f"/v1/images/{ticket['image_id']}")
    assert status == 200 and body["status"] in ("requested", "rejected") and body["replicas"] == []
    assert cluster.disk_sha256(ticket["node_id"], ticket["image_id"]) is None  # nothing stored


async def test_too_large_file_is_refused_with_413(page: Page, app_server: AppServer) -> None:
    limit = app_server.cluster.settings().limits.max_upload_bytes
    result = await run(page, file=f"zeros:{limit + 1}", name="huge.jpg")
    assert not result["ok"]
    assert (result["error"]["code"], result["error"]["status"]) == ("too_large", 413)
    assert not [e for e in result["events"] if e[0] == "retry"]


async def test_put_is_retried_after_a_503_and_a_dropped_connection(page: Page, app_server: AppServer) -> None:
    result = await run(page, file="/files/chelsea_gps.jpg", name="chelsea.jpg", fault=["503", "drop"])
    assert result["ok"], result
    retries = [e for e in result["events"] if e[0] == "retry"]
    assert retries == [["retry", "put", 1, "unavailable", 503], ["retry", "put", 2, "network_error", 0]]
    assert app_server.proxied == [("503", 503), ("drop", 0), ("forward", 201)]
    assert {e[3] for e in progress(result)} >= {3}  # the third attempt sent the bytes that were stored
    assert result["image"]["status"] == "ready"


async def test_a_lost_201_is_not_an_error(page: Page, app_server: AppServer) -> None:
    """The node stored the first PUT but the answer was lost: the retry's 409 means the upload went through."""
    result = await run(page, file="/files/chelsea_gps.jpg", name="chelsea.jpg", fault=["lost-201"])
    assert result["ok"], result
    assert app_server.proxied == [("lost-201", 201), ("forward", 409)]
    assert [e[3] for e in result["events"] if e[0] == "retry"] == ["network_error"]
    assert result["image"]["status"] == "ready"
