-- Image pipeline: processing results, fingerprints for dedupe, and the indexes that keep its lookups O(log n).
ALTER TABLE images
    ADD COLUMN pages         integer,
    ADD COLUMN animated      boolean,
    ADD COLUMN colour_space  text,
    ADD COLUMN exif          jsonb,
    ADD COLUMN had_gps       boolean,
    ADD COLUMN phash         bigint,
    -- The 64-bit perceptual hash in four 16-bit chunks (multi-index hashing): two hashes within Hamming
    -- distance d share at least one chunk within floor(d/4) bits, so a near-duplicate search is a few
    -- index probes per chunk, never a scan.
    ADD COLUMN ph0           integer,
    ADD COLUMN ph1           integer,
    ADD COLUMN ph2           integer,
    ADD COLUMN ph3           integer,
    ADD COLUMN processed_at  timestamptz;

CREATE INDEX images_ph0 ON images (ph0) WHERE ph0 IS NOT NULL;
CREATE INDEX images_ph1 ON images (ph1) WHERE ph1 IS NOT NULL;
CREATE INDEX images_ph2 ON images (ph2) WHERE ph2 IS NOT NULL;
CREATE INDEX images_ph3 ON images (ph3) WHERE ph3 IS NOT NULL;
-- Exact duplicates by content hash.
CREATE INDEX images_sha256 ON images (sha256) WHERE sha256 IS NOT NULL;
-- Each node's sweep for uploads it has not finished processing.
CREATE INDEX images_unprocessed ON images (origin_node, uploaded_at) WHERE status IN ('uploaded', 'processing');
