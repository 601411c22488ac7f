"""URL table of the query service."""

from __future__ import annotations

from aiohttp import web

from query_service import (
    handlers_admin,
    handlers_apps,
    handlers_control,
    handlers_dashboard,
    handlers_deletes,
    handlers_images,
    handlers_keys,
    handlers_moderation,
    handlers_search,
    handlers_srcset,
    handlers_uploads,
    openapi,
)

IMAGE_ID = r"{image_id:[^/]{1,64}}"
NODE_ID = r"{node_id:[a-z0-9][a-z0-9-]{0,62}}"


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/uploads", handlers_uploads.create_upload)
    app.router.add_get(f"/v1/images/{IMAGE_ID}", handlers_images.get_image)
    app.router.add_get(f"/v1/images/{IMAGE_ID}/url", handlers_images.get_url)
    app.router.add_get("/v1/images", handlers_search.list_images)
    app.router.add_get(f"/v1/images/{IMAGE_ID}/srcset", handlers_srcset.get_srcset)
    app.router.add_get(f"/img/{IMAGE_ID}", handlers_images.redirect)
    app.router.add_delete(f"/v1/images/{IMAGE_ID}", handlers_deletes.delete_image)
    app.router.add_get("/v1/nodes", handlers_control.list_nodes)
    app.router.add_get("/v1/capacity", handlers_control.list_nodes)
    app.router.add_post(f"/v1/nodes/{NODE_ID}/state", handlers_control.set_state)
    app.router.add_post(f"/v1/nodes/{NODE_ID}/replace", handlers_control.replace_node)
    app.router.add_get(f"/v1/nodes/{NODE_ID}/backfill", handlers_control.backfill)
    app.router.add_get("/v1/repair", handlers_control.repair)
    app.router.add_post("/v1/repair", handlers_control.repair)
    app.router.add_post(f"/v1/images/{IMAGE_ID}/approve", handlers_moderation.approve)
    app.router.add_post(f"/v1/images/{IMAGE_ID}/reject", handlers_moderation.reject)
    app.router.add_get("/healthz", handlers_admin.healthz)
    app.router.add_get("/openapi.json", openapi.openapi_json)
    app.router.add_post("/v1/keys", handlers_keys.create_key)
    app.router.add_get("/v1/keys", handlers_keys.list_keys)
    app.router.add_delete("/v1/keys/{key_id:[^/]{1,64}}", handlers_keys.revoke_key)
    app.router.add_get("/v1/apps/default-image", handlers_apps.get_default_image)
    app.router.add_put("/v1/apps/default-image", handlers_apps.put_default_image)
    app.router.add_get("/dashboard", handlers_dashboard.dashboard_page)
    app.router.add_get("/v1/dashboard", handlers_dashboard.dashboard_data)
    app.router.add_get("/upload-demo", handlers_dashboard.upload_demo_page)
    app.router.add_get(r"/assets/{name:[a-z0-9-]{1,40}\.[a-z]{2,4}}", handlers_dashboard.asset)
