-- Read models folded from the event log. The same DDL serves PostgreSQL and SQLite:
-- only TEXT and BIGINT columns; booleans are 0/1, times are unix milliseconds, lists are
-- JSON text. No table holds a provider secret or a proxy key's hash.

CREATE TABLE projector_checkpoints (
    stream TEXT PRIMARY KEY,
    seq BIGINT NOT NULL
);

CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX projects_by_tenant ON projects (tenant_id);

CREATE TABLE connections (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    name TEXT NOT NULL,
    base_url TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX connections_by_project ON connections (project_id);

CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    name TEXT NOT NULL,
    hint TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    revoke_reason TEXT,
    last_used_at BIGINT,
    connection_ids TEXT NOT NULL,
    allowed_models TEXT
);
CREATE INDEX keys_by_project ON keys (project_id, created_at);

CREATE TABLE requests (
    request_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    connection_id TEXT,
    provider TEXT,
    model TEXT,
    endpoint TEXT NOT NULL,
    status BIGINT NOT NULL,
    streamed BIGINT NOT NULL CHECK (streamed IN (0, 1)),
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    total_tokens BIGINT NOT NULL,
    latency_us BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    node TEXT NOT NULL,
    seq BIGINT NOT NULL
);
CREATE INDEX requests_by_project ON requests (project_id, started_at, seq);
CREATE INDEX requests_by_key ON requests (key_id, started_at);

CREATE TABLE key_usage (
    key_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    total_tokens BIGINT NOT NULL,
    latency_us_sum BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL
);

CREATE TABLE project_usage (
    project_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    total_tokens BIGINT NOT NULL,
    latency_us_sum BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL
);
