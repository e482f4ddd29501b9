-- Count inserted records once per statement (a transition table grouped by
-- category, source and status) instead of once per row: a 1,000-record batch
-- is one insert statement and one upsert per group.

-- migrate:up
DROP TRIGGER record_counts_insert_delete ON records;

CREATE FUNCTION record_counts_track_inserts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO record_counts (category, source, status, shard, n)
    SELECT category, source, status, pg_backend_pid() % 16, count(*) FROM inserted
    GROUP BY category, source, status
    ON CONFLICT (category, source, status, shard) DO UPDATE SET n = record_counts.n + excluded.n;
    RETURN NULL;
END
$$;

CREATE TRIGGER record_counts_insert AFTER INSERT ON records
REFERENCING NEW TABLE AS inserted
FOR EACH STATEMENT EXECUTE FUNCTION record_counts_track_inserts();

CREATE TRIGGER record_counts_delete AFTER DELETE ON records
FOR EACH ROW EXECUTE FUNCTION record_counts_track();

-- migrate:down
DROP TRIGGER record_counts_delete ON records;
DROP TRIGGER record_counts_insert ON records;
DROP FUNCTION record_counts_track_inserts();
CREATE TRIGGER record_counts_insert_delete AFTER INSERT OR DELETE ON records
FOR EACH ROW EXECUTE FUNCTION record_counts_track();
