-- Image search (GET /v1/images): an app's own images, filtered, newest or oldest first, keyset-paginated on
-- (created_at, image_id). Every filter has an index, so no listing scans the table
-- (tests/integration/test_search_scale.py checks the plans on 1,000,000 rows).

-- The listing itself (and the created_after/created_before range): one ordered range per app, read forwards
-- or backwards, the cursor a seek inside it.
CREATE INDEX images_app_created ON images (app_id, created_at, image_id);
-- Admin keys list every app's images.
CREATE INDEX images_created ON images (created_at, image_id);
-- Equality filters keep the order: one value of format, status or visibility is an ordered range of these,
-- so "newest jpegs" stops after `limit` rows however few the app has.
CREATE INDEX images_app_format_created ON images (app_id, format, created_at, image_id);
CREATE INDEX images_app_status_created ON images (app_id, status, created_at, image_id);
CREATE INDEX images_app_visibility_created ON images (app_id, visibility, created_at, image_id);
-- Range filters cannot keep the creation order: a selective range is found here and sorted (the planner
-- walks the ordered index above instead when the range matches most rows).
CREATE INDEX images_app_width ON images (app_id, width);
CREATE INDEX images_app_height ON images (app_id, height);
CREATE INDEX images_app_ready ON images (app_id, ready_at) WHERE ready_at IS NOT NULL;
-- Tags (all of: @>, any of: &&) and metadata key = value (@>); jsonb_path_ops is smaller and faster than
-- the default operator class for containment, the only operator search uses.
CREATE INDEX images_tags ON images USING gin (tags);
CREATE INDEX images_metadata ON images USING gin (metadata jsonb_path_ops);
