-- Transactions that write the same counter shard (backend pid mod 16 collides across
-- connections) took its rows' locks in different orders: a batch insert's groups come
-- out of a hash aggregate in no set order, and a worker's batch changes many records'
-- counts one by one. Two such transactions could deadlock (seen once in the benchmark:
-- a 503 on POST /records/batch). Every count change now first takes a transaction-level
-- advisory lock on its shard: transactions on one shard queue, those on different
-- shards touch different rows, so no cycle can form. Nothing waits for a row lock after
-- touching the counts (docs/reports.md), so the advisory lock cannot close a cycle either.

-- migrate:up
CREATE OR REPLACE FUNCTION record_counts_track() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    my_shard smallint := pg_backend_pid() % 16;
BEGIN
    PERFORM pg_advisory_xact_lock(72202, my_shard);  -- (key space "record_counts", shard)
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

CREATE OR REPLACE FUNCTION record_counts_track_inserts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(72202, pg_backend_pid() % 16);
    INSERT INTO record_counts (category, source, status, shard, n)
    SELECT category, source, status, pg_backend_pid() % 16, count(*) FROM inserted
    GROUP BY category, source, status
    ON CONFLICT (category, source, status, shard) DO UPDATE SET n = record_counts.n + excluded.n;
    RETURN NULL;
END
$$;

-- migrate:down
CREATE OR REPLACE FUNCTION record_counts_track_inserts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO record_counts (category, source, status, shard, n)
    SELECT category, source, status, pg_backend_pid() % 16, count(*) FROM inserted
    GROUP BY category, source, status
    ON CONFLICT (category, source, status, shard) DO UPDATE SET n = record_counts.n + excluded.n;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION record_counts_track() RETURNS trigger LANGUAGE plpgsql AS $$
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
