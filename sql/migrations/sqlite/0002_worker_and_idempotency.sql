-- The worker's queue order (available_at: when a pending record may next be
-- processed, later after a transient error) and stored idempotent responses.

-- migrate:up
ALTER TABLE records ADD COLUMN available_at TEXT NOT NULL DEFAULT '';
UPDATE records SET available_at = created_at;
CREATE INDEX ix_records_pending_queue ON records (available_at, id) WHERE status = 'pending';

CREATE TABLE idempotency_keys (
    key          TEXT PRIMARY KEY,
    request_hash TEXT NOT NULL,
    status_code  INTEGER,
    response     TEXT,
    created_at   TEXT NOT NULL
);
CREATE INDEX ix_idempotency_keys_created ON idempotency_keys (created_at);

-- migrate:down
DROP TABLE idempotency_keys;
DROP INDEX ix_records_pending_queue;
ALTER TABLE records DROP COLUMN available_at;
