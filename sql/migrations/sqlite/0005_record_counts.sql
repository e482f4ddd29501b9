-- Exact counts by category, source and status, kept by triggers in the same
-- transaction as every insert, status change and delete, so totals and the
-- summary never count the records table (docs/reports.md).

-- migrate:up
CREATE TABLE record_counts (
    category TEXT NOT NULL,
    source   TEXT NOT NULL,
    status   TEXT NOT NULL,
    shard    INTEGER NOT NULL,
    n        INTEGER NOT NULL,
    PRIMARY KEY (category, source, status, shard)
) WITHOUT ROWID;

INSERT INTO record_counts (category, source, status, shard, n)
SELECT category, source, status, 0, count(*) FROM records GROUP BY category, source, status;

CREATE TRIGGER record_counts_insert AFTER INSERT ON records
BEGIN
    INSERT INTO record_counts (category, source, status, shard, n)
    VALUES (NEW.category, NEW.source, NEW.status, 0, 1)
    ON CONFLICT (category, source, status, shard) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER record_counts_update AFTER UPDATE OF status, category, source ON records
WHEN OLD.status IS NOT NEW.status OR OLD.category IS NOT NEW.category OR OLD.source IS NOT NEW.source
BEGIN
    UPDATE record_counts SET n = n - 1
    WHERE category = OLD.category AND source = OLD.source AND status = OLD.status AND shard = 0;
    INSERT INTO record_counts (category, source, status, shard, n)
    VALUES (NEW.category, NEW.source, NEW.status, 0, 1)
    ON CONFLICT (category, source, status, shard) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER record_counts_delete AFTER DELETE ON records
BEGIN
    UPDATE record_counts SET n = n - 1
    WHERE category = OLD.category AND source = OLD.source AND status = OLD.status AND shard = 0;
END;

-- migrate:down
DROP TRIGGER record_counts_delete;
DROP TRIGGER record_counts_update;
DROP TRIGGER record_counts_insert;
DROP TABLE record_counts;
