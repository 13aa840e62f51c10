-- Spend control, the read side: hourly usage rollups with latency histograms, per-minute
-- rates, spend per budget window, the limits of keys and projects, and the budget
-- signals the projector derives. The usage projection is reset here: the projector reads
-- the usage stream again from its start and rebuilds every usage view (the old per-key
-- and per-project counters are replaced by the rollups). The control stream is read
-- again too, so that the limits of existing keys and projects are projected; its other
-- views come out of the replay unchanged (every control fold is idempotent and applied
-- in order).

DROP TABLE key_usage;
DROP TABLE project_usage;

DELETE FROM requests;
DELETE FROM projector_checkpoints WHERE stream IN ('SG_USAGE', 'SG_CONTROL');
UPDATE keys SET last_used_at = NULL;

ALTER TABLE requests ADD COLUMN cached_prompt_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN cost_micros BIGINT NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN priced BIGINT NOT NULL DEFAULT 0 CHECK (priced IN (0, 1));

-- One row per project, UTC hour, key and model (`''`: the request named no model).
-- latency_hist: base64 of the HdrHistogram V2 serialization of latencies in microseconds
-- (bounds 1 µs to one day, two significant digits), merged on every upsert.
CREATE TABLE usage_hourly (
    project_id TEXT NOT NULL,
    hour BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    cached_prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    total_tokens BIGINT NOT NULL,
    cost_micros BIGINT NOT NULL,
    unpriced_requests BIGINT NOT NULL,
    latency_hist TEXT NOT NULL,
    PRIMARY KEY (project_id, hour, key_id, model)
);
CREATE INDEX usage_hourly_by_key ON usage_hourly (key_id, hour);

-- One row per project, UTC minute and key.
CREATE TABLE usage_minute (
    project_id TEXT NOT NULL,
    minute BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    requests BIGINT NOT NULL,
    total_tokens BIGINT NOT NULL,
    cost_micros BIGINT NOT NULL,
    PRIMARY KEY (project_id, minute, key_id)
);
CREATE INDEX usage_minute_by_key ON usage_minute (key_id, minute);

-- Settled spend of every project and key in every budget window of every period
-- (window ids as the quota ledgers name them: d<day>, M<yyyy-mm>, total).
CREATE TABLE spend (
    scope TEXT NOT NULL CHECK (scope IN ('project', 'key')),
    id TEXT NOT NULL,
    period TEXT NOT NULL CHECK (period IN ('day', 'month', 'total')),
    window_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    cost_micros BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    PRIMARY KEY (scope, id, period, window_id)
);

-- The limits of every project and key (JSON of the events' limits), with the budget
-- broken out for the projector.
CREATE TABLE limits (
    scope TEXT NOT NULL CHECK (scope IN ('project', 'key')),
    id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    limits_json TEXT NOT NULL,
    budget_micros BIGINT,
    budget_period TEXT CHECK (budget_period IN ('day', 'month', 'total')),
    PRIMARY KEY (scope, id)
);

-- Budget signals derived by the projector, written in the transaction that made them
-- due and appended to the signals stream after it committed (an outbox). id is the
-- signal's threshold_id or reset_id and the log message id; published_at stays NULL
-- until the log acknowledged the append.
CREATE TABLE budget_signals (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('threshold', 'reset')),
    tenant_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    key_id TEXT,
    period TEXT NOT NULL,
    window_id TEXT NOT NULL,
    percent BIGINT,
    budget_micros BIGINT,
    spent_micros BIGINT,
    derived_at BIGINT NOT NULL,
    published_at BIGINT
);
CREATE INDEX budget_signals_pending ON budget_signals (derived_at, id) WHERE published_at IS NULL;

-- One row, updated first by every transaction that writes the views, so that they are
-- applied one after another even across streams: a batch never runs beside another that
-- changes what it reads (a key and its first requests, a budget and its spend).
CREATE TABLE views_writer (
    id BIGINT PRIMARY KEY
);
INSERT INTO views_writer (id) VALUES (1);
