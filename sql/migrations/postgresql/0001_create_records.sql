-- Records, their audit trail, and the indexes behind the listing filters and sorts.
-- Text columns that are filtered or sorted use the "C" collation so that their
-- order is code-point order, the same as SQLite's.

-- migrate:up
CREATE TABLE records (
    id             uuid PRIMARY KEY,
    source         text COLLATE "C" NOT NULL CHECK (char_length(source) BETWEEN 1 AND 128),
    category       text COLLATE "C" NOT NULL CHECK (char_length(category) BETWEEN 1 AND 128),
    payload        json NOT NULL,
    status         text COLLATE "C" NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'processed', 'failed')),
    result         json,
    classification text,
    score          double precision,
    error          text,
    attempts       integer NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    processed_at   timestamptz
);

CREATE INDEX ix_records_created ON records (created_at, id);
CREATE INDEX ix_records_status_created ON records (status, created_at, id);
CREATE INDEX ix_records_category_created ON records (category, created_at, id);
CREATE INDEX ix_records_source_created ON records (source, created_at, id);
CREATE INDEX ix_records_category_status ON records (category, status, id);
CREATE INDEX ix_records_source_status ON records (source, status, id);

CREATE TABLE record_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    record_id   uuid NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    from_status text,
    to_status   text NOT NULL,
    at          timestamptz NOT NULL,
    request_id  text,
    detail      text
);

CREATE INDEX ix_record_events_record ON record_events (record_id, id);

-- migrate:down
DROP TABLE record_events;
DROP TABLE records;
