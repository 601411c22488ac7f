"""The query service's OpenAPI 3.0 description, served at GET /openapi.json.

Written by hand as data (the routes are few and the contract is docs/api.md): every status a route can
answer is listed with its body, so a schema-driven fuzzer (schemathesis, in the test suite) can check
that no request gets a 5xx or an undocumented answer.

Both the app-facing API and the operator (admin) endpoints are described. Operations marked
``x-destructive: true`` change the cluster's shape (node states, replacements): the fuzzing test
leaves them out so that a run cannot take nodes away from the cluster it is checking.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from common import __version__

JSON = "application/json"
IMAGE_ID = {"type": "string", "pattern": "^[a-z2-7]{22}$"}
NODE_ID = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"}
NODE_STATES = ["active", "readonly", "draining", "dead"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    texts = {
        400: "invalid request",
        401: "no or bad API key",
        403: "forbidden",
        404: "not found",
        409: "conflict",
        413: "too large",
        429: "over the key's rate (see Retry-After)",
        431: "headers too large",
        503: "unavailable (see Retry-After)",
    }
    return {str(s): _json(_ref("Error"), texts[s]) for s in statuses}


_COMMON_ERRORS = (401, 429, 431, 503)  # 503: database_unavailable, for anything reading Postgres
_URL_PARAMS = [
    {"name": "w", "in": "query", "schema": {"type": "number", "minimum": 1, "maximum": 16384}},
    {"name": "h", "in": "query", "schema": {"type": "number", "minimum": 1, "maximum": 16384}},
    {"name": "dpr", "in": "query", "schema": {"type": "number", "minimum": 0.5, "maximum": 5}},
    {"name": "fit", "in": "query", "schema": {"type": "string", "enum": ["inside", "cover"]}},
    {"name": "fmt", "in": "query", "schema": {"type": "string", "enum": ["auto", "jpeg", "webp", "avif", "png"]}},
    {
        "name": "client_ip",
        "in": "query",
        "schema": {"type": "string", "format": "ipv4"},
        "description": "the end user's address; only honoured with an API key",
    },
    {
        "name": "variant",
        "in": "query",
        "schema": {"type": "string", "enum": ["original"]},
        "description": "`original`: a signed URL of the uploaded bytes (TIFF, BMP, ICO: as PNG), for the owner only",
    },
]
_DEFAULT_PARAM = {
    "name": "default",
    "in": "query",
    "schema": IMAGE_ID,
    "description": "a public, ready image of the same app to give if this public image is deleted, rejected or expired",
}
_IMAGE_PATH = [{"name": "image_id", "in": "path", "required": True, "schema": IMAGE_ID}]
_STATUS_SIGNATURE = [  # the signed status_url of an upload ticket: a browser polls without a key
    {"name": name, "in": "query", "schema": {"type": "string"}, "description": "status signature (see status_url)"}
    for name in ("exp", "kid", "sig")
]
_NODE_PATH = [{"name": "node_id", "in": "path", "required": True, "schema": NODE_ID}]
_COUNTS = {"type": "object", "additionalProperties": {"type": "integer"}}
_DIMENSION = {"type": "integer", "minimum": 0, "maximum": 2147483647}
_LIST = "comma-separated; may be repeated"
_SEARCH_PARAMS = [
    {"name": "tags", "in": "query", "schema": {"type": "string"}, "description": f"every one of these tags ({_LIST})"},
    {"name": "any_tags", "in": "query", "schema": {"type": "string"}, "description": f"any of these tags ({_LIST})"},
    {
        "name": "format",
        "in": "query",
        "schema": {"type": "string"},
        "description": f"jpeg, png, gif, webp, avif, heic ({_LIST})",
    },
    {
        "name": "status",
        "in": "query",
        "schema": {"type": "string"},
        "description": f"image statuses ({_LIST}); default: all but deleted",
    },
    {"name": "visibility", "in": "query", "schema": {"type": "string", "enum": ["public", "private"]}},
    *(
        {"name": name, "in": "query", "schema": _DIMENSION}
        for name in ("min_width", "max_width", "min_height", "max_height")
    ),
    *(
        {"name": name, "in": "query", "schema": {"type": "string", "format": "date-time"}, "description": "ISO 8601"}
        for name in ("created_after", "created_before", "ready_after", "ready_before")
    ),
    {"name": "order", "in": "query", "schema": {"type": "string", "enum": ["newest", "oldest"]}},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
    {"name": "cursor", "in": "query", "schema": {"type": "string"}, "description": "next_cursor of the previous page"},
    {
        "name": "app_id",
        "in": "query",
        "schema": {"type": "string", "pattern": "^[0-9a-f]{8}$"},
        "description": "admin keys: one app's images (an app key may name only its own app)",
    },
]
_SRCSET_PARAMS = [
    {
        "name": "widths",
        "in": "query",
        "schema": {"type": "string", "pattern": "^[0-9]{1,5}(,[0-9]{1,5}){0,19}$"},
        "description": "comma-separated widths, 1-16384 (default: query.srcset_widths, else limits.widths)",
    },
    *_URL_PARAMS[3:6],  # fit, fmt, client_ip
]

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "UploadRequest": {
        "type": "object",
        "properties": {
            "filename": {"type": "string", "maxLength": 255},
            "content_type": {"type": "string", "maxLength": 255},
            "size": {"type": "integer", "minimum": 0},
            "visibility": {"type": "string", "enum": ["public", "private"]},
            "tags": {"type": "array", "maxItems": 20, "items": {"type": "string", "minLength": 1, "maxLength": 64}},
            "metadata": {"type": "object"},
            "callback_url": {"type": "string", "maxLength": 2048},
            "client_ip": {"type": "string", "format": "ipv4"},
        },
    },
    "UploadTicket": {
        "type": "object",
        "required": [
            "image_id",
            "upload_url",
            "upload_method",
            "expires_at",
            "max_bytes",
            "node_id",
            "region",
            "status",
            "status_url",
            "signed_status_url",
        ],
        "properties": {
            "image_id": IMAGE_ID,
            "upload_url": {"type": "string"},
            "upload_method": {"type": "string", "enum": ["PUT"]},
            "expires_at": {"type": "string"},
            "max_bytes": {"type": "integer"},
            "node_id": {"type": "string"},
            "region": {"type": "string"},
            "status": {"type": "string", "enum": ["requested"]},
            "status_url": {"type": "string"},
            "signed_status_url": {"type": "string", "description": "status_url, signed: readable without a key"},
        },
    },
    "Image": {
        "type": "object",
        "required": ["image_id", "status", "visibility", "replicas"],
        "properties": {
            "image_id": IMAGE_ID,
            "status": {
                "type": "string",
                "enum": [
                    "requested",
                    "uploaded",
                    "processing",
                    "ready",
                    "rejected",
                    "quarantined",
                    "deleted",
                    "expired",
                ],
            },
            "visibility": {"type": "string", "enum": ["public", "private"]},
            "replicas": {"type": "array", "items": {"type": "object", "required": ["node_id", "region", "state"]}},
            "stored_bytes": {
                "type": "integer",
                "minimum": 0,
                "description": "bytes on disk over every node: each ok original plus the variants nodes report",
            },
        },
    },
    "ImageUrl": {
        "type": "object",
        "required": ["url", "node_id", "region", "distance_km", "variant", "expires_at", "alternatives"],
        "properties": {
            "url": {"type": "string"},
            "node_id": {"type": "string"},
            "region": {"type": "string"},
            "distance_km": {"type": "number"},
            "variant": {"type": "string"},
            "expires_at": {"type": "string", "nullable": True},
            "alternatives": {"type": "array", "items": {"type": "object"}},
            "fallback": {"type": "string", "enum": ["default"], "description": "set when a default stands in"},
            "default_image_id": IMAGE_ID,
        },
    },
    "DefaultImageRequest": {
        "type": "object",
        "required": ["image_id"],
        "properties": {"image_id": {**IMAGE_ID, "nullable": True}},
    },
    "DefaultImage": {
        "type": "object",
        "required": ["app_id", "default_image_id"],
        "properties": {"app_id": {"type": "string"}, "default_image_id": {**IMAGE_ID, "nullable": True}},
    },
    "ImageList": {
        "type": "object",
        "required": ["images", "next_cursor"],
        "properties": {
            "images": {"type": "array", "items": _ref("Image")},
            "next_cursor": {"type": "string", "nullable": True},
        },
    },
    "Srcset": {
        "type": "object",
        "required": ["srcset", "src", "widths", "variants", "node_id", "region", "expires_at"],
        "properties": {
            "srcset": {"type": "string"},
            "src": {"type": "string"},
            "widths": {"type": "array", "items": {"type": "integer"}},
            "variants": {"type": "array", "items": {"type": "string"}},
            "node_id": {"type": "string"},
            "region": {"type": "string"},
            "expires_at": {"type": "string", "nullable": True},
        },
    },
    "KeyRequest": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$"},
            "scopes": {"type": "array", "minItems": 1, "items": {"type": "string", "enum": ["app", "admin"]}},
            "app_id": {"type": "string", "pattern": "^[0-9a-f]{8}$"},
            "rate_per_s": {"type": "number", "minimum": 0, "maximum": 1000000},
            "referers": {"type": "array", "maxItems": 50, "items": {"type": "string"}},
        },
    },
    "NewKey": {
        "type": "object",
        "required": ["key_id", "api_key", "name", "app_id", "scopes"],
        "properties": {
            "key_id": {"type": "string"},
            "api_key": {"type": "string"},
            "name": {"type": "string"},
            "app_id": {"type": "string"},
            "scopes": {"type": "array", "items": {"type": "string"}},
            "rate_per_s": {"type": "number", "nullable": True},
            "referers": {"type": "array", "items": {"type": "string"}},
        },
    },
    "KeyList": {
        "type": "object",
        "required": ["keys"],
        "properties": {
            "keys": {
                "type": "array",
                "items": {"type": "object", "required": ["key_id", "name", "app_id", "scopes", "created_at"]},
            }
        },
    },
    "Revoked": {
        "type": "object",
        "required": ["key_id", "revoked_at"],
        "properties": {"key_id": {"type": "string"}, "revoked_at": {"type": "string"}},
    },
    "Nodes": {
        "type": "object",
        "required": ["nodes"],
        "properties": {
            "nodes": {
                "type": "array",
                "items": {"type": "object", "required": ["node_id", "region", "set_id", "state", "healthy"]},
            },
            "cluster": {
                "type": "object",
                "nullable": True,
                "description": "every live node; a file system shared by several nodes counted once",
            },
            "history_s": {"type": "number", "description": "span of the usage samples behind the forecasts"},
            "forecast_min_span_s": {"type": "number", "description": "forecasts appear once history_s reaches it"},
        },
    },
    "Deleted": {
        "type": "object",
        "required": ["image_id", "status"],
        "properties": {"image_id": IMAGE_ID, "status": {"type": "string", "enum": ["deleted"]}},
    },
    "NodeStateRequest": {
        "type": "object",
        "required": ["state"],
        "properties": {"state": {"type": "string", "enum": NODE_STATES}},
    },
    "NodeState": {
        "type": "object",
        "required": ["node_id", "state", "state_set_by"],
        "properties": {
            "node_id": NODE_ID,
            "state": {"type": "string", "enum": NODE_STATES},
            "state_set_by": {"type": "string", "enum": ["operator"]},
        },
    },
    "ReplaceRequest": {
        "type": "object",
        "properties": {
            "with": NODE_ID,
            "reason": {"type": "string"},
            "provision": {"type": "boolean", "description": "call the configured provisioner (default true)"},
        },
    },
    "Replacement": {
        "type": "object",
        "required": ["plan", "config"],
        "properties": {
            "plan": {"type": "object", "required": ["nodes"], "properties": {"nodes": {"type": "array"}}},
            "config": {
                "type": "object",
                "required": ["node_id", "region", "set_id", "lat", "lon"],
                "properties": {
                    "node_id": NODE_ID,
                    "region": {"type": "string"},
                    "set_id": {"type": "string"},
                    "lat": {"type": "number"},
                    "lon": {"type": "number"},
                },
            },
        },
    },
    "Backfill": {
        "type": "object",
        "required": ["node_id", "set_id", "state", "expected", "done", "pending", "missing", "corrupt", "complete"],
        "properties": {
            "node_id": NODE_ID,
            "set_id": {"type": "string"},
            "state": {"type": "string", "enum": NODE_STATES},
            "expected": {"type": "integer"},
            "done": {"type": "integer"},
            "pending": {"type": "integer"},
            "missing": {"type": "integer"},
            "corrupt": {"type": "integer"},
            "complete": {"type": "boolean"},
        },
    },
    "Repair": {
        "type": "object",
        "required": ["under_replicated", "replicas_waiting", "by_node", "nudged", "on_dead_nodes", "hint"],
        "properties": {
            "under_replicated": {"type": "integer"},
            "replicas_waiting": {"type": "integer"},
            "by_node": {"type": "object", "additionalProperties": _COUNTS},
            "nudged": {"type": "integer"},
            "on_dead_nodes": {"type": "array", "items": {"type": "string"}},
            "hint": {"type": "string", "nullable": True},
        },
    },
    "Decision": {
        "type": "object",
        "required": ["image_id", "status"],
        "properties": {
            "image_id": IMAGE_ID,
            "status": {"type": "string", "enum": ["ready", "rejected"]},
            "reason": {"type": "string"},
        },
    },
    "RejectRequest": {"type": "object", "properties": {"reason": {"type": "string"}}},
    "Dashboard": {
        "type": "object",
        "required": ["generated_at", "stats_age_s", "summary", "regions", "sets", "nodes", "events"],
        "properties": {
            "generated_at": {"type": "string"},
            "stats_age_s": {"type": "number", "nullable": True},
            "summary": {"type": "object"},
            "regions": {"type": "array"},
            "sets": {"type": "array"},
            "nodes": {"type": "array"},
            "replaced_nodes": {"type": "array", "items": {"type": "string"}},
            "events": {"type": "array"},
            "history": {
                "type": "object",
                "description": "The charts' last query.history_s, at most query.history_points per series.",
                "required": ["window_s", "step_s", "t", "series", "forecast"],
                "properties": {
                    "window_s": {"type": "number"},
                    "step_s": {"type": "number"},
                    "t": {"type": "array", "items": {"type": "number"}, "description": "seconds since the epoch"},
                    "series": {
                        "type": "object",
                        "additionalProperties": {"type": "array", "items": {"type": "number", "nullable": True}},
                    },
                    "forecast": {
                        "type": "object",
                        "properties": {
                            "growth_bytes_per_day": {"type": "number", "nullable": True},
                            "days_until_full": {"type": "number", "nullable": True},
                        },
                    },
                },
            },
        },
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
}


def spec(server_url: str = "") -> dict[str, Any]:
    auth: list[dict[str, list[str]]] = [{"apiKey": []}]
    anonymous_or_key: list[dict[str, list[str]]] = [{"apiKey": []}, {}]  # {}: no key needed
    paths: dict[str, Any] = {
        "/v1/uploads": {
            "post": {
                "summary": "Create an upload: the image row and a signed, expiring upload URL on the nearest node.",
                "security": auth,
                "requestBody": {"required": False, "content": {JSON: {"schema": _ref("UploadRequest")}}},
                "responses": {
                    "201": _json(_ref("UploadTicket"), "upload ticket"),
                    **_errors(400, 403, 413, 503, *_COMMON_ERRORS),
                },
            }
        },
        "/v1/images/{image_id}": {
            "get": {
                "summary": "Status, metadata and replicas of an image (another app's private image is not found).",
                "security": anonymous_or_key,
                "parameters": _IMAGE_PATH + _STATUS_SIGNATURE,
                "responses": {"200": _json(_ref("Image"), "the image"), **_errors(403, 404, *_COMMON_ERRORS)},
            },
            "delete": {
                "summary": "Delete an image (a key of the owning app, or admin): served no more, files go.",
                "security": auth,
                "parameters": _IMAGE_PATH,
                "responses": {"202": _json(_ref("Deleted"), "deleted"), **_errors(403, 404, *_COMMON_ERRORS)},
            },
        },
        "/v1/images/{image_id}/url": {
            "get": {
                "summary": "URL of the nearest healthy replica for the variant that fits the box (signed if private).",
                "security": anonymous_or_key,
                "parameters": _IMAGE_PATH + _URL_PARAMS + [_DEFAULT_PARAM],
                "responses": {
                    "200": _json(_ref("ImageUrl"), "the URL and alternatives"),
                    **_errors(400, 403, 404, 409, 503, *_COMMON_ERRORS),
                },
            }
        },
        "/v1/images": {
            "get": {
                "summary": "The caller's images (an admin key: every app's), filtered, newest or oldest first,"
                " paginated. Also meta.<key>=<value>: a metadata key equals the value.",
                "security": auth,
                "parameters": _SEARCH_PARAMS,
                "responses": {
                    "200": _json(_ref("ImageList"), "a page of images"),
                    **_errors(400, 403, *_COMMON_ERRORS),
                },
            }
        },
        "/v1/images/{image_id}/srcset": {
            "get": {
                "summary": "A srcset of the image's variants on the nearest healthy node (signed if private).",
                "security": anonymous_or_key,
                "parameters": _IMAGE_PATH + _SRCSET_PARAMS,
                "responses": {
                    "200": _json(_ref("Srcset"), "the srcset and its fallback src"),
                    **_errors(400, 404, 409, 503, *_COMMON_ERRORS),
                },
            }
        },
        "/img/{image_id}": {
            "get": {
                "summary": "302 to the URL above; public images only, subject to the owner's Referer allowlist.",
                "security": anonymous_or_key,
                "parameters": _IMAGE_PATH + _URL_PARAMS[:5] + [_DEFAULT_PARAM],
                "responses": {
                    "302": {
                        "description": "redirect to a node",
                        "headers": {"Location": {"schema": {"type": "string"}}},
                    },
                    **_errors(400, 403, 404, 409, 503, *_COMMON_ERRORS),
                },
            }
        },
        "/v1/nodes": {
            "get": {
                "summary": "Every node with health and capacity (admin).",
                "security": auth,
                "responses": {"200": _json(_ref("Nodes"), "nodes"), **_errors(403, *_COMMON_ERRORS)},
            }
        },
        "/v1/capacity": {
            "get": {
                "summary": "The same view as /v1/nodes: sets, regions, growth and days until full (admin).",
                "security": auth,
                "responses": {"200": _json(_ref("Nodes"), "capacity"), **_errors(403, *_COMMON_ERRORS)},
            }
        },
        "/v1/nodes/{node_id}/state": {
            "post": {
                "summary": "Set a node's state (admin); a dead node set live again is backfilled.",
                "security": auth,
                "parameters": _NODE_PATH,
                "x-destructive": True,
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("NodeStateRequest")}}},
                "responses": {
                    "200": _json(_ref("NodeState"), "the new state"),
                    **_errors(400, 403, 404, 409, *_COMMON_ERRORS),
                },
            }
        },
        "/v1/nodes/{node_id}/replace": {
            "post": {
                "summary": "Plan the replacement of a node (admin): a new member of its set and region, backfilled.",
                "security": auth,
                "parameters": _NODE_PATH,
                "x-destructive": True,
                "requestBody": {"required": False, "content": {JSON: {"schema": _ref("ReplaceRequest")}}},
                "responses": {
                    "202": _json(_ref("Replacement"), "the plan and the new node's settings"),
                    **_errors(400, 403, 404, 409, *_COMMON_ERRORS),
                },
            }
        },
        "/v1/nodes/{node_id}/backfill": {
            "get": {
                "summary": "How far a node's copy of its set has come (admin).",
                "security": auth,
                "parameters": _NODE_PATH,
                "responses": {"200": _json(_ref("Backfill"), "progress"), **_errors(403, 404, *_COMMON_ERRORS)},
            }
        },
        "/v1/repair": {
            "get": {
                "summary": "What is under-replicated, by node (admin).",
                "security": auth,
                "responses": {"200": _json(_ref("Repair"), "repair status"), **_errors(403, *_COMMON_ERRORS)},
            },
            "post": {
                "summary": "Make every waiting copy due now (the members' sweeps copy them; admin).",
                "security": auth,
                "responses": {"200": _json(_ref("Repair"), "repair status"), **_errors(403, *_COMMON_ERRORS)},
            },
        },
        "/v1/images/{image_id}/approve": {
            "post": {
                "summary": "Approve a quarantined image: it becomes ready (admin).",
                "security": auth,
                "parameters": _IMAGE_PATH,
                "responses": {"200": _json(_ref("Decision"), "approved"), **_errors(403, 404, 409, *_COMMON_ERRORS)},
            }
        },
        "/v1/images/{image_id}/reject": {
            "post": {
                "summary": "Reject a quarantined image: every copy is removed (admin).",
                "security": auth,
                "parameters": _IMAGE_PATH,
                "requestBody": {"required": False, "content": {JSON: {"schema": _ref("RejectRequest")}}},
                "responses": {
                    "200": _json(_ref("Decision"), "rejected"),
                    **_errors(400, 403, 404, 409, *_COMMON_ERRORS),
                },
            }
        },
        "/v1/dashboard": {
            "get": {
                "summary": "The operator dashboard's data (admin).",
                "security": auth,
                "responses": {"200": _json(_ref("Dashboard"), "dashboard data"), **_errors(403, *_COMMON_ERRORS)},
            }
        },
        "/v1/keys": {
            "get": {
                "summary": "Every API key (never the secret; admin).",
                "security": auth,
                "responses": {"200": _json(_ref("KeyList"), "keys"), **_errors(403, *_COMMON_ERRORS)},
            },
            "post": {
                "summary": "Create a key (for a new app, or an existing app_id); the plaintext is shown once.",
                "security": auth,
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("KeyRequest")}}},
                "responses": {"201": _json(_ref("NewKey"), "the new key"), **_errors(400, 403, 404, *_COMMON_ERRORS)},
            },
        },
        "/v1/keys/{key_id}": {
            "delete": {
                "summary": "Revoke a key (admin).",
                "security": auth,
                "parameters": [
                    {
                        "name": "key_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9a-f]{8}$"},
                    }
                ],
                "responses": {"200": _json(_ref("Revoked"), "revoked"), **_errors(403, 404, *_COMMON_ERRORS)},
            }
        },
        "/v1/apps/default-image": {
            "get": {
                "summary": "The default image of the caller's app (null when none).",
                "security": auth,
                "responses": {"200": _json(_ref("DefaultImage"), "the default"), **_errors(403, *_COMMON_ERRORS)},
            },
            "put": {
                "summary": "Set (null: clear) the caller's app's default image: one of its public, ready images.",
                "security": auth,
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("DefaultImageRequest")}}},
                "responses": {
                    "200": _json(_ref("DefaultImage"), "the new default"),
                    **_errors(400, 403, 404, 409, *_COMMON_ERRORS),
                },
            },
        },
        "/healthz": {
            "get": {
                "summary": "Liveness and node health counts.",
                "security": [{}],
                "responses": {"200": _json(_ref("Health"), "ok"), **_errors(431)},
            }
        },
    }
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "minicdn query service",
            "version": __version__,
            "description": "The app-facing and operator API of minicdn (docs/api.md in the repository). Errors are "
            '{"error": {"code", "message"}}.',
        },
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}}},
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(spec())
