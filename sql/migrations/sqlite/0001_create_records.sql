-- Records, their audit trail, and the indexes behind the listing filters and sorts.
-- Timestamps are TEXT in one fixed-width UTC form (2026-01-31T12:00:00.000000Z),
-- so string order is time order and range filters compare correctly.

-- migrate:up
CREATE TABLE records (
    id             TEXT PRIMARY KEY,
    source         TEXT NOT NULL CHECK (length(source) BETWEEN 1 AND 128),
    category       TEXT NOT NULL CHECK (length(category) BETWEEN 1 AND 128),
    payload        TEXT NOT NULL,
    status         TEXT NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'processed', 'failed')),
    result         TEXT,
    classification TEXT,
    score          REAL,
    error          TEXT,
    attempts       INTEGER NOT NULL DEFAULT 0,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    processed_at   TEXT
);

CREATE INDEX ix_records_created ON records (created_at, id);
CREATE INDEX ix_records_status_created ON records (status, created_at, id);
CREATE INDEX ix_records_category_created ON records (category, created_at, id);
CREATE INDEX ix_records_source_created ON records (source, created_at, id);
CREATE INDEX ix_records_category_status ON records (category, status, id);
CREATE INDEX ix_records_source_status ON records (source, status, id);

CREATE TABLE record_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id   TEXT NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    from_status TEXT,
    to_status   TEXT NOT NULL,
    at          TEXT NOT NULL,
    request_id  TEXT,
    detail      TEXT
);

CREATE INDEX ix_record_events_record ON record_events (record_id, id);

-- migrate:down
DROP TABLE record_events;
DROP TABLE records;
