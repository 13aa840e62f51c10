-- The bytes of each request and its answer: the measure of endpoints that report no
-- tokens (audio, images, files).
ALTER TABLE requests ADD COLUMN request_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN response_bytes BIGINT NOT NULL DEFAULT 0;
