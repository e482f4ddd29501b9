-- Audit-trail integrity.

-- name: audit_mismatches
-- Records whose status is not the to_status of their last event, or that have no event at all.
SELECT r.id AS record_id, r.status,
       (SELECT e.to_status FROM record_events e WHERE e.record_id = r.id ORDER BY e.id DESC LIMIT 1) AS last_event
FROM records r
WHERE r.status IS DISTINCT FROM
      (SELECT e.to_status FROM record_events e WHERE e.record_id = r.id ORDER BY e.id DESC LIMIT 1)
LIMIT 1000;
