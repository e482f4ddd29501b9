-- Audit-trail integrity.

-- name: audit_mismatches
-- Records whose status is not the to_status of their last event, or that have no event at all.
SELECT r.id AS record_id, r.status,
       (SELECT e.to_status FROM record_events e WHERE e.record_id = r.id ORDER BY e.id DESC LIMIT 1) AS last_event
FROM records r
WHERE r.status IS DISTINCT FROM
      (SELECT e.to_status FROM record_events e WHERE e.record_id = r.id ORDER BY e.id DESC LIMIT 1)
LIMIT 1000;

-- name: audit_count_mismatches
-- Groups whose maintained count (record_counts) differs from the records themselves.
WITH actual AS (
    SELECT category, source, status, count(*) AS n FROM records GROUP BY category, source, status
), counted AS (
    SELECT category, source, status, sum(n) AS n FROM record_counts GROUP BY category, source, status
)
SELECT a.category, a.source, a.status, a.n AS actual, coalesce(c.n, 0) AS counted
FROM actual a LEFT JOIN counted c ON c.category = a.category AND c.source = a.source AND c.status = a.status
WHERE a.n <> coalesce(c.n, 0)
UNION ALL
SELECT c.category, c.source, c.status, 0 AS actual, c.n AS counted
FROM counted c
WHERE c.n <> 0 AND NOT EXISTS (
    SELECT 1 FROM actual a WHERE a.category = c.category AND a.source = c.source AND a.status = c.status);
