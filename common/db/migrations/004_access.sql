-- Access control: apps own images and keys, per-key rate limits, per-app hotlink allowlists, audit log.
CREATE TABLE apps (
    app_id               text PRIMARY KEY,
    name                 text NOT NULL,
    -- Hotlink protection: host names whose pages may embed this app's public images; empty: any site.
    referers             text[] NOT NULL DEFAULT '{}',
    allow_empty_referer  boolean NOT NULL DEFAULT true,
    created_at           timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE api_keys ADD COLUMN app_id text REFERENCES apps (app_id);
ALTER TABLE api_keys ADD COLUMN rate_per_s double precision CHECK (rate_per_s IS NULL OR rate_per_s >= 0);
-- Keys made before apps existed each become their own app.
INSERT INTO apps (app_id, name) SELECT key_id, name FROM api_keys;
UPDATE api_keys SET app_id = key_id;
ALTER TABLE api_keys ALTER COLUMN app_id SET NOT NULL;
CREATE INDEX api_keys_app ON api_keys (app_id);

-- Every image belongs to the app of the key that requested it (filled by a trigger, so every insert path
-- gets it without knowing about apps).
ALTER TABLE images ADD COLUMN app_id text REFERENCES apps (app_id);
UPDATE images i SET app_id = k.app_id FROM api_keys k WHERE i.owner_key_id = k.key_id;

CREATE FUNCTION images_set_app() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.app_id IS NULL AND NEW.owner_key_id IS NOT NULL THEN
        SELECT app_id INTO NEW.app_id FROM api_keys WHERE key_id = NEW.owner_key_id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER images_set_app BEFORE INSERT ON images FOR EACH ROW EXECUTE FUNCTION images_set_app();

-- Who did what: upload requests, uploads, deletes and key changes. Append-only.
CREATE TABLE audit_log (
    audit_id   bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    action     text NOT NULL,
    app_id     text,
    key_id     text,
    image_id   text,
    node_id    text,
    client_ip  inet,
    detail     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_image ON audit_log (image_id, at) WHERE image_id IS NOT NULL;
CREATE INDEX audit_log_at ON audit_log (at);
