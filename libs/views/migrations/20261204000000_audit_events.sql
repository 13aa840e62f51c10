-- The audit trail: the security-relevant control events (suspensions, revocations, locks,
-- bindings, rotations, abuse and alert settings) and every signal (lock violations,
-- budget signals, alerts), one row per log message. (stream, seq) is the message's
-- position, so applying it again changes nothing; event_id is the envelope's id, so the
-- same event appended twice (a budget signal published again) is recorded once.
-- event_time is unix milliseconds; data is the event's data as JSON text, with nothing
-- secret (no key or token hashes, no sealed secrets).
CREATE TABLE audit_events (
    stream TEXT NOT NULL,
    seq BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    key_id TEXT,
    event_type TEXT NOT NULL,
    event_time BIGINT NOT NULL,
    actor TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (stream, seq)
);
CREATE UNIQUE INDEX audit_events_by_id ON audit_events (event_id);
CREATE INDEX audit_events_by_project ON audit_events (project_id, event_time, stream, seq);
CREATE INDEX audit_events_by_key ON audit_events (key_id, event_time);

-- Control events projected before the trail existed: the projector reads the control
-- stream once more up to where it had projected it (`through`), recording only the
-- trail (the other views hold those events already: folding them again would re-derive
-- budget signals from limits long replaced). `done` is how far it got; the row is
-- removed once it is through.
CREATE TABLE audit_backfill (
    stream TEXT PRIMARY KEY,
    done BIGINT NOT NULL,
    through BIGINT NOT NULL
);
INSERT INTO audit_backfill (stream, done, through)
SELECT stream, 0, seq FROM projector_checkpoints WHERE stream = 'SG_CONTROL' AND seq > 0;
