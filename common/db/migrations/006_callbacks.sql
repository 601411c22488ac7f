-- Durable `callback_url` deliveries (a transactional outbox). A row is written in the same transaction
-- that records the image's outcome, so a crash or restart after the commit cannot lose the callback;
-- any process delivers due rows, claiming them with FOR UPDATE SKIP LOCKED and a lease (next_at moved
-- past the POST's timeout) so two processes never send the same row at once.
CREATE TABLE callback_outbox (
    delivery_id  uuid PRIMARY KEY,             -- sent as X-Minicdn-Delivery: the same on every retry
    image_id     text NOT NULL,
    url          text NOT NULL,
    body         jsonb NOT NULL,               -- the event as it was when recorded
    state        text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts     integer NOT NULL DEFAULT 0,
    next_at      timestamptz NOT NULL DEFAULT now(),
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);

-- The delivery sweep: due rows only, oldest first.
CREATE INDEX callback_outbox_due ON callback_outbox (next_at) WHERE state = 'pending';
-- Retention: finished rows are deleted after `callbacks.keep_days`.
CREATE INDEX callback_outbox_finished ON callback_outbox (finished_at) WHERE state <> 'pending';
