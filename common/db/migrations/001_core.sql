-- Core data model: sets, nodes, api keys, images and their replicas (the replication outbox).
CREATE TABLE sets (
    set_id      text PRIMARY KEY,
    state       text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'closed')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE nodes (
    node_id         text PRIMARY KEY,
    region          text NOT NULL,
    set_id          text NOT NULL REFERENCES sets (set_id),
    base_url        text NOT NULL,
    lat             double precision NOT NULL,
    lon             double precision NOT NULL,
    capacity_bytes  bigint NOT NULL DEFAULT 0,
    used_bytes      bigint NOT NULL DEFAULT 0,
    free_bytes      bigint NOT NULL DEFAULT 0,
    objects         bigint NOT NULL DEFAULT 0,
    state           text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'readonly', 'draining', 'dead')),
    last_heartbeat  timestamptz,
    version         text NOT NULL DEFAULT '',
    registered_at   timestamptz NOT NULL DEFAULT now()
);
-- A set has at most one member per region.
CREATE UNIQUE INDEX nodes_set_region ON nodes (set_id, region);

CREATE TABLE api_keys (
    key_id      text PRIMARY KEY,
    key_hash    bytea NOT NULL UNIQUE,
    name        text NOT NULL,
    scopes      text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE images (
    image_id      text PRIMARY KEY,
    owner_key_id  text REFERENCES api_keys (key_id),
    status        text NOT NULL CHECK (status IN ('requested', 'uploaded', 'processing', 'ready',
                                                  'rejected', 'quarantined', 'deleted')),
    reason        text,
    visibility    text NOT NULL DEFAULT 'public' CHECK (visibility IN ('public', 'private')),
    filename      text,
    content_type  text,
    format        text,
    width         integer,
    height        integer,
    bytes         bigint,
    max_bytes     bigint NOT NULL,
    sha256        text,
    set_id        text NOT NULL REFERENCES sets (set_id),
    origin_node   text NOT NULL REFERENCES nodes (node_id),
    tags          text[] NOT NULL DEFAULT '{}',
    metadata      jsonb NOT NULL DEFAULT '{}',
    callback_url  text,
    duplicate_of  text REFERENCES images (image_id),
    created_at    timestamptz NOT NULL DEFAULT now(),
    uploaded_at   timestamptz,
    ready_at      timestamptz,
    deleted_at    timestamptz
);

CREATE TABLE replicas (
    image_id     text NOT NULL REFERENCES images (image_id) ON DELETE CASCADE,
    node_id      text NOT NULL REFERENCES nodes (node_id),
    state        text NOT NULL CHECK (state IN ('pending', 'ok', 'corrupt', 'missing')),
    bytes        bigint,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    verified_at  timestamptz,
    PRIMARY KEY (image_id, node_id)
);
-- The replicator's sweep: this node's pending rows, oldest first, without scanning.
CREATE INDEX replicas_pending ON replicas (node_id, created_at) WHERE state = 'pending';
