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

-- name: bucket.hour.created_at
-- The hour a record was created in (timestamps are fixed-width UTC text).
substr(created_at, 1, 13) || ':00:00.000000Z'

-- name: bucket.day.created_at
-- The day a record was created on.
substr(created_at, 1, 10) || 'T00:00:00.000000Z'

-- name: bucket.hour.processed_at
-- The hour a record reached its terminal state in.
substr(processed_at, 1, 13) || ':00:00.000000Z'

-- name: bucket.day.processed_at
-- The day a record reached its terminal state on.
substr(processed_at, 1, 10) || 'T00:00:00.000000Z'

-- name: timeseries_created
-- Records created per bucket, by current status. Naming every status lets SQLite read the
-- (status, created_at, id) index alone, one range per status, instead of visiting each row.
SELECT {bucket} AS start, status, count(*) AS n
FROM records WHERE status IN ('pending', 'processed', 'failed') AND {filters}
GROUP BY 1, 2;

-- name: timeseries_finished
-- Records that reached processed or failed per bucket, with processing latency.
-- SQLite has no percentile function: p50/p95 are NULL, average and maximum are given.
SELECT {bucket} AS start, status, count(*) AS n,
       avg((julianday(processed_at) - julianday(created_at)) * 86400000.0) AS latency_avg_ms,
       max((julianday(processed_at) - julianday(created_at)) * 86400000.0) AS latency_max_ms,
       NULL AS latency_p50_ms, NULL AS latency_p95_ms
FROM records WHERE {filters} AND status IN ('processed', 'failed')
GROUP BY 1, 2;

-- name: latest_failures
-- The most recent failures, newest first, for the dashboard.
SELECT {record_columns} FROM records WHERE status = 'failed' AND processed_at IS NOT NULL
ORDER BY processed_at DESC, id DESC LIMIT :limit;

-- name: count_from_counts
-- How many records match status/category/source filters, from the maintained counts.
SELECT coalesce(sum(n), 0) AS total FROM record_counts WHERE {filters};

-- name: summary_from_counts
-- summary_counts from the maintained counts (no date filter).
SELECT 'category' AS dimension, category AS key, status, sum(n) AS n
FROM record_counts WHERE {filters} GROUP BY category, status
UNION ALL
SELECT 'source' AS dimension, source AS key, status, sum(n) AS n
FROM record_counts WHERE {filters} GROUP BY source, status;
