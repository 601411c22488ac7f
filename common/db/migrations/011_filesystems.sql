-- The file systems under a node's tiers, from its heartbeat: {"<machine-id>:<st_dev>": {"total_bytes",
-- "free_bytes"}}. Nodes (or tiers) on one disk report the same key, so totals count that disk once.
ALTER TABLE nodes ADD COLUMN filesystems jsonb NOT NULL DEFAULT '{}'::jsonb;
