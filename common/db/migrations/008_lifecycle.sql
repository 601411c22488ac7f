-- An honest upload lifecycle and per-app default images.
--
-- `expired`: a ticket (`requested` row) not used before its signed URL expired. The query services' lifecycle
-- sweep moves such rows there, and removes `expired` and `rejected` rows `lifecycle.retention_s` after they ended.
ALTER TABLE images DROP CONSTRAINT images_status_check;
ALTER TABLE images ADD CONSTRAINT images_status_check CHECK (status IN ('requested', 'uploaded', 'processing',
    'ready', 'rejected', 'quarantined', 'deleted', 'expired'));

-- When the ticket's upload URL expires (its signed `exp`).
ALTER TABLE images ADD COLUMN expires_at timestamptz;
-- Tickets issued before this migration: no URL can outlive signing.max_ttl_s (7 days by default).
UPDATE images SET expires_at = created_at + interval '7 days' WHERE status = 'requested';
-- When an image reached `expired` or `rejected` (retention counts from here). Set by a trigger, so every path
-- that rejects (the PUT, processing, an operator) or expires gets it without knowing about retention.
ALTER TABLE images ADD COLUMN ended_at timestamptz;
UPDATE images SET ended_at = coalesce(processed_at, created_at) WHERE status = 'rejected';

CREATE FUNCTION images_set_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IN ('expired', 'rejected') AND NEW.status IS DISTINCT FROM OLD.status THEN
        NEW.ended_at := now();
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER images_set_ended BEFORE UPDATE OF status ON images FOR EACH ROW EXECUTE FUNCTION images_set_ended();

-- The expiry sweep: requested rows by expiry, never a scan.
CREATE INDEX images_requested_expiry ON images (expires_at) WHERE status = 'requested';
-- The retention sweep: ended rows by end time.
CREATE INDEX images_ended ON images (ended_at) WHERE status IN ('expired', 'rejected');
-- Retention clears references to a removed row first (rare: a duplicate of an upload that was rejected).
CREATE INDEX images_duplicate_of ON images (duplicate_of) WHERE duplicate_of IS NOT NULL;

-- An app's default image: served (its variant of the same size and format) for its missing public images.
ALTER TABLE apps ADD COLUMN default_image_id text REFERENCES images (image_id) ON DELETE SET NULL;
