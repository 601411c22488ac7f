"""URL table of the storage node."""

from __future__ import annotations

from aiohttp import web

from storage_node import cors, handlers_admin, handlers_peer, handlers_read, handlers_write

IMAGE_ID = r"{image_id:[^/]{1,64}}"


def add_routes(app: web.Application) -> None:
    app.router.add_put(f"/upload/{IMAGE_ID}", handlers_write.put_upload)
    app.router.add_route("OPTIONS", f"/upload/{IMAGE_ID}", cors.preflight)
    app.router.add_get(f"/i/{IMAGE_ID}/{{variant:[^/]{{1,64}}}}", handlers_read.get_image)  # GET and HEAD
    app.router.add_get(f"/peer/objects/{IMAGE_ID}", handlers_peer.get_original)
    app.router.add_get("/peer/objects", handlers_peer.get_originals)
    app.router.add_get("/healthz", handlers_admin.healthz)
    app.router.add_get("/stats", handlers_admin.stats)
