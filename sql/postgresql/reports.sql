-- Reports.

-- name: summary_counts
-- Per-status counts by category and by source in one scan (grouping sets), so one snapshot.
SELECT CASE WHEN GROUPING(category) = 0 THEN 'category' ELSE 'source' END AS dimension,
       COALESCE(category, source) AS key, status, count(*) AS n
FROM records WHERE {filters}
GROUP BY GROUPING SETS ((category, status), (source, status));
