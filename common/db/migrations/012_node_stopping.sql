-- A node's announcement that it is stopping (its graceful stop on SIGTERM began): set by the node before it
-- stops listening, cleared when it registers again at start-up. While set, the node is no holder (no URL, no
-- copy source, no 307 target) and takes no upload. Not a state: `state` stays what operators and the
-- capacity monitor set.
ALTER TABLE nodes ADD COLUMN stopping_at timestamptz;
