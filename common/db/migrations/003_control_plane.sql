-- Control plane: node state provenance, delete outbox, capacity samples, provisioning/control events.

-- Who set a node's state: `auto` (the capacity monitor: readonly at the critical mark, dead after a long
-- silence; it may undo its own decisions) or `operator` (never undone automatically).
ALTER TABLE nodes ADD COLUMN state_set_by text NOT NULL DEFAULT 'auto' CHECK (state_set_by IN ('auto', 'operator'));
ALTER TABLE nodes ADD COLUMN state_changed_at timestamptz NOT NULL DEFAULT now();
-- A dead member keeps its row (history, events) but frees its set's slot for its region, so a
-- replacement can join the set.
DROP INDEX nodes_set_region;
CREATE UNIQUE INDEX nodes_set_region_live ON nodes (set_id, region) WHERE state <> 'dead';
CREATE INDEX nodes_set ON nodes (set_id);

-- Backfill, repair and the `pending`/`missing`/`corrupt` backlog: found through indexes, never a scan.
CREATE INDEX replicas_needs_copy ON replicas (node_id, updated_at) WHERE state IN ('missing', 'corrupt');
CREATE INDEX images_set ON images (set_id) WHERE status <> 'deleted';

-- The delete outbox: one row per member that still has to remove an image's files. A member that is
-- down catches up from its rows when it returns (JetStream is only the fast path).
CREATE TABLE deletions (
    image_id    text NOT NULL REFERENCES images (image_id) ON DELETE CASCADE,
    node_id     text NOT NULL REFERENCES nodes (node_id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node_id, image_id)
);

-- Usage over time, for growth rates and days-until-full (written by the capacity monitor's leader).
CREATE TABLE capacity_samples (
    node_id      text NOT NULL REFERENCES nodes (node_id),
    sampled_at   timestamptz NOT NULL DEFAULT now(),
    used_bytes   bigint NOT NULL,
    objects      bigint NOT NULL,
    PRIMARY KEY (node_id, sampled_at)
);

-- Every control-plane action with its reason and outcome. A provisioning row is written (`planned`)
-- before the provisioner is called, so a leader that crashes mid-provision never provisions twice.
CREATE TABLE provisioning_events (
    event_id     bigserial PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('new_set', 'replace', 'set_closed', 'set_opened', 'node_state')),
    set_id       text,
    node_id      text,
    state        text NOT NULL CHECK (state IN ('planned', 'running', 'succeeded', 'failed', 'done')),
    reason       text NOT NULL,
    outcome      text,
    plan         jsonb,
    provisioner  text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE INDEX provisioning_events_recent ON provisioning_events (created_at DESC);
-- At most one new set in flight cluster-wide (a second leader, or a retry, cannot plan another), and at
-- most one replacement in flight per lost node.
CREATE UNIQUE INDEX provisioning_one_new_set ON provisioning_events ((true))
    WHERE state IN ('planned', 'running') AND kind = 'new_set';
CREATE UNIQUE INDEX provisioning_one_replace ON provisioning_events (node_id)
    WHERE state IN ('planned', 'running') AND kind = 'replace';
