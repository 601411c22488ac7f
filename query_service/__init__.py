"""Query service: app-facing API (uploads, status, nearest-replica URLs) over Postgres and the node registry."""
