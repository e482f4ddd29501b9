-- Reports.

-- name: summary_counts
-- Per-status counts by category and by source in one statement, so one snapshot.
SELECT 'category' AS dimension, category AS key, status, count(*) AS n
FROM records WHERE {filters} GROUP BY category, status
UNION ALL
SELECT 'source' AS dimension, source AS key, status, count(*) AS n
FROM records WHERE {filters} GROUP BY source, status;

-- name: filter.processed_from
-- Inclusive lower bound on processed_at.
processed_at >= :processed_from

-- name: filter.processed_to
-- Inclusive upper bound on processed_at.
processed_at <= :processed_to

-- name: timeseries_created
-- Records created per bucket, by current status. :buckets is a JSON array of [start, end)
-- text pairs, one per bucket (the last one's end is null: the date_to filter bounds it, and
-- '~' sorts after every timestamp). Each bucket and status is counted on its own range of
-- the (status, created_at, id) index. A GROUP BY sorted every matching row first, and that
-- sorter held about 1 MiB in each thread that ran the report (docs/reports.md).
WITH buckets AS MATERIALIZED (
    SELECT json_extract(value, '$[0]') AS start, coalesce(json_extract(value, '$[1]'), '~') AS stop
    FROM json_each(:buckets)
)
SELECT b.start, s.status,
       (SELECT count(*) FROM records
        WHERE status = s.status AND created_at >= b.start AND created_at < b.stop AND {filters}) AS n
FROM buckets AS b, (SELECT 'pending' AS status UNION ALL SELECT 'processed' UNION ALL SELECT 'failed') AS s;

-- name: timeseries_finished
-- Records that reached processed or failed per bucket, with processing latency, one range of
-- the finished index per bucket and status, like timeseries_created. A scalar subquery gives
-- one value, so its three aggregates travel as a JSON array; MATERIALIZED keeps SQLite from
-- copying the subquery into each of the three json_extract calls (three scans). SQLite has no
-- percentile function: p50/p95 are NULL, average and maximum are given.
WITH buckets AS MATERIALIZED (
    SELECT json_extract(value, '$[0]') AS start, coalesce(json_extract(value, '$[1]'), '~') AS stop
    FROM json_each(:buckets)
),
per_bucket AS MATERIALIZED (
    SELECT b.start, s.status,
           (SELECT json_array(count(*),
                              avg((julianday(processed_at) - julianday(created_at)) * 86400000.0),
                              max((julianday(processed_at) - julianday(created_at)) * 86400000.0))
            FROM records
            WHERE status = s.status AND processed_at >= b.start AND processed_at < b.stop AND {filters}) AS stats
    FROM buckets AS b, (SELECT 'processed' AS status UNION ALL SELECT 'failed') AS s
)
SELECT start, status, json_extract(stats, '$[0]') AS n, json_extract(stats, '$[1]') AS latency_avg_ms,
       json_extract(stats, '$[2]') AS latency_max_ms, NULL AS latency_p50_ms, NULL AS latency_p95_ms
FROM per_bucket;

-- name: latest_failures
-- The most recent failures, newest first, for the dashboard.
SELECT {record_columns} FROM records WHERE status = 'failed' AND processed_at IS NOT NULL
ORDER BY processed_at DESC, id DESC LIMIT :limit;

-- name: count_from_counts
-- How many records match status/category/source filters, from the maintained counts.
SELECT coalesce(sum(n), 0) AS total FROM record_counts WHERE {filters};

-- name: status_mix
-- For each status, how many of its records pass the filter (a category's or a source's) and how
-- many it has, from the maintained counts (records.ListingPlanner).
SELECT status, coalesce(sum(CASE WHEN {filters} THEN n END), 0) AS matching, sum(n) AS total
FROM record_counts GROUP BY status;

-- name: summary_from_counts
-- summary_counts from the maintained counts (no date filter).
SELECT 'category' AS dimension, category AS key, status, sum(n) AS n
FROM record_counts WHERE {filters} GROUP BY category, status
UNION ALL
SELECT 'source' AS dimension, source AS key, status, sum(n) AS n
FROM record_counts WHERE {filters} GROUP BY source, status;
