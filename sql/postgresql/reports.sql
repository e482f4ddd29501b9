-- Reports.

-- name: summary_counts
-- Per-status counts by category and by source in one scan (grouping sets), so one snapshot.
SELECT CASE WHEN GROUPING(category) = 0 THEN 'category' ELSE 'source' END AS dimension,
       COALESCE(category, source) AS key, status, count(*) AS n
FROM records WHERE {filters}
GROUP BY GROUPING SETS ((category, status), (source, status));

-- name: filter.processed_from
-- Inclusive lower bound on processed_at.
processed_at >= %(processed_from)s::timestamptz

-- name: filter.processed_to
-- Inclusive upper bound on processed_at.
processed_at <= %(processed_to)s::timestamptz

-- name: timeseries_created
-- Records created per UTC bucket (the bucket parameter: 'hour' or 'day'), by current status.
-- It groups on the truncated timestamp and formats only the groups. (SQLite counts each bucket
-- on its own instead; here the grouping's memory is the server's, not the worker's.)
SELECT to_char(bucket, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS start, status, n
FROM (SELECT date_trunc(%(bucket)s, created_at AT TIME ZONE 'UTC') AS bucket, status, count(*) AS n
      FROM records WHERE {filters}
      GROUP BY 1, 2) AS grouped;

-- name: timeseries_finished
-- Records that reached processed or failed per UTC bucket, with processing latency percentiles.
SELECT to_char(bucket, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS start, status, n,
       latency_avg_ms, latency_max_ms, latency_p50_ms, latency_p95_ms
FROM (SELECT date_trunc(%(bucket)s, processed_at AT TIME ZONE 'UTC') AS bucket, status, count(*) AS n,
             avg(extract(epoch FROM processed_at - created_at) * 1000)::float8 AS latency_avg_ms,
             max(extract(epoch FROM processed_at - created_at) * 1000)::float8 AS latency_max_ms,
             percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - created_at) * 1000)
                 AS latency_p50_ms,
             percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - created_at) * 1000)
                 AS latency_p95_ms
      FROM records WHERE {filters} AND status IN ('processed', 'failed')
      GROUP BY 1, 2) AS grouped;

-- name: latest_failures
-- The most recent failures, newest first, for the dashboard.
SELECT {record_columns} FROM records WHERE status = 'failed' AND processed_at IS NOT NULL
ORDER BY records.processed_at DESC, records.id DESC LIMIT %(limit)s;

-- name: count_from_counts
-- How many records match status/category/source filters, from the maintained counts.
SELECT coalesce(sum(n), 0)::bigint AS total FROM record_counts WHERE {filters};

-- name: status_mix
-- For each status, how many of its records pass the filter (a category's or a source's) and how
-- many it has, from the maintained counts (records.ListingPlanner).
SELECT status, coalesce(sum(CASE WHEN {filters} THEN n END), 0)::bigint AS matching, sum(n)::bigint AS total
FROM record_counts GROUP BY status;

-- name: summary_from_counts
-- summary_counts from the maintained counts (no date filter): the shards are summed here, so
-- some 45 rows come back instead of one per shard, category, source and status (2,400).
SELECT CASE WHEN GROUPING(category) = 0 THEN 'category' ELSE 'source' END AS dimension,
       COALESCE(category, source) AS key, status, sum(n)::bigint AS n
FROM record_counts WHERE {filters}
GROUP BY GROUPING SETS ((category, status), (source, status));

-- name: fold_lock_timeout
-- fold_counts waits at most a second for the shards' locks: a transaction left open after
-- changing counts (an operator's psql session) holds its shard, and every writer would queue
-- behind a fold that waited for it. The fold is tried again at the next cleanup.
SET LOCAL lock_timeout = '1s';

-- name: lock_count_shards
-- Every counter shard's advisory lock (migration 0007), in shard order, for fold_counts: count
-- changes in flight finish first, new ones wait for the fold's commit. 16 is the triggers' modulus.
SELECT pg_advisory_xact_lock(72202, shard) FROM generate_series(0, 15) AS shard;

-- name: fold_counts
-- Fold every shard's counts into shard 0 (worker cleanup, `cleanup`): the summary and listing
-- totals then sum one row per (category, source, status) instead of one per shard.
WITH folded AS (DELETE FROM record_counts WHERE shard <> 0 RETURNING category, source, status, n)
INSERT INTO record_counts (category, source, status, shard, n)
SELECT category, source, status, 0, sum(n) FROM folded GROUP BY category, source, status
ON CONFLICT (category, source, status, shard) DO UPDATE SET n = record_counts.n + excluded.n;

-- name: drop_empty_counts
-- After fold_counts: rows whose count is zero (every record of that combination moved on).
DELETE FROM record_counts WHERE n = 0;
