-- Reports.

-- name: summary_counts
-- Per-status counts by category and by source in one statement, so one snapshot.
SELECT 'category' AS dimension, category AS key, status, count(*) AS n
FROM records WHERE {filters} GROUP BY category, status
UNION ALL
SELECT 'source' AS dimension, source AS key, status, count(*) AS n
FROM records WHERE {filters} GROUP BY source, status;
