-- Exact counts by category, source and status, kept by triggers in the same
-- transaction as every insert, status change and delete, so totals and the
-- summary never count the records table (docs/reports.md). Each connection
-- writes its own shard (backend pid mod 16), so concurrent transactions do not
-- queue on one counter row; a shard may go negative, the sum is exact.

-- migrate:up
CREATE TABLE record_counts (
    category text COLLATE "C" NOT NULL,
    source   text COLLATE "C" NOT NULL,
    status   text COLLATE "C" NOT NULL,
    shard    smallint NOT NULL,
    n        bigint NOT NULL,
    PRIMARY KEY (category, source, status, shard)
);

INSERT INTO record_counts (category, source, status, shard, n)
SELECT category, source, status, 0, count(*) FROM records GROUP BY category, source, status;

CREATE FUNCTION record_counts_track() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    my_shard smallint := pg_backend_pid() % 16;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO record_counts (category, source, status, shard, n)
        VALUES (OLD.category, OLD.source, OLD.status, my_shard, -1)
        ON CONFLICT (category, source, status, shard) DO UPDATE SET n = record_counts.n - 1;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO record_counts (category, source, status, shard, n)
        VALUES (NEW.category, NEW.source, NEW.status, my_shard, 1)
        ON CONFLICT (category, source, status, shard) DO UPDATE SET n = record_counts.n + 1;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER record_counts_insert_delete AFTER INSERT OR DELETE ON records
FOR EACH ROW EXECUTE FUNCTION record_counts_track();

CREATE TRIGGER record_counts_update AFTER UPDATE OF status, category, source ON records
FOR EACH ROW
WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.category IS DISTINCT FROM NEW.category
      OR OLD.source IS DISTINCT FROM NEW.source)
EXECUTE FUNCTION record_counts_track();

-- migrate:down
DROP TRIGGER record_counts_update ON records;
DROP TRIGGER record_counts_insert_delete ON records;
DROP FUNCTION record_counts_track();
DROP TABLE record_counts;
