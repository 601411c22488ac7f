-- Tiered storage on nodes (hot and cold directories) and the bytes stored per image.
-- Each node reports, in batches, the bytes of the variants it keeps per image (a cache: evicted and
-- rebuilt), so an image's stored bytes are the sum over its replicas of the original plus its variants.
ALTER TABLE replicas ADD COLUMN variant_bytes bigint NOT NULL DEFAULT 0;
-- Per-tier usage from the heartbeat: {"hot": {"capacity_bytes", "used_bytes", "free_bytes", "originals"},
-- "cold": {...}} (cold only on a node with a cold directory), and the node's bytes of variants.
ALTER TABLE nodes ADD COLUMN tiers jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE nodes ADD COLUMN variant_bytes bigint NOT NULL DEFAULT 0;
