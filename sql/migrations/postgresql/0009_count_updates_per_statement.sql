-- Count updates once per statement, from its transition tables, as inserts are since 0006.
-- The worker stores a batch's outcomes in one UPDATE (states.store_transitions); with the row
-- trigger of 0005 a 500-record batch still rewrote the same few dozen counter rows hundreds of
-- times in one transaction. Row versions made inside a running transaction cannot be pruned,
-- so record_counts grew by new pages as records were processed (249 pages for 400 rows after
-- 50,000, docs/benchmarks.md), and every read of the counts scans them. Now an UPDATE makes
-- one upsert per (category, source, status) whose count it moved. An UPDATE trigger with
-- transition tables can have no column list and no WHEN, so this one fires on every update
-- of records; one that moves no count takes no lock and writes nothing.

-- migrate:up
CREATE FUNCTION record_counts_track_updates() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    my_shard smallint := pg_backend_pid() % 16;
BEGIN
    -- As many rows before as after: the counts move unless both hold the same (category, source, status)s.
    IF NOT EXISTS (SELECT category, source, status FROM old_rows
                   EXCEPT ALL
                   SELECT category, source, status FROM new_rows) THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock(72202, my_shard);  -- the shard's lock (0007)
    INSERT INTO record_counts (category, source, status, shard, n)
    SELECT category, source, status, my_shard, sum(change) FROM (
        SELECT category, source, status, -1 AS change FROM old_rows
        UNION ALL
        SELECT category, source, status, 1 FROM new_rows
    ) AS changes
    GROUP BY category, source, status
    HAVING sum(change) <> 0
    ON CONFLICT (category, source, status, shard) DO UPDATE SET n = record_counts.n + excluded.n;
    RETURN NULL;
END
$$;

DROP TRIGGER record_counts_update ON records;

CREATE TRIGGER record_counts_update AFTER UPDATE ON records
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION record_counts_track_updates();

-- migrate:down
DROP TRIGGER record_counts_update ON records;
DROP FUNCTION record_counts_track_updates();

CREATE TRIGGER record_counts_update AFTER UPDATE OF status, category, source ON records
FOR EACH ROW
WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.category IS DISTINCT FROM NEW.category
      OR OLD.source IS DISTINCT FROM NEW.source)
EXECUTE FUNCTION record_counts_track();
