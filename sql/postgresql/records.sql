-- Records: create, fetch, list, and state changes.

-- name: record_columns
-- The columns of a record as the API returns them (JSON as text, times as RFC 3339 UTC).
id::text AS id, source, category, payload::text AS payload, status, result::text AS result,
classification, score, error, attempts,
to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at,
to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS updated_at,
to_char(processed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS processed_at

-- name: insert_records_with_events
-- Create pending records and their creation events in one statement, from a JSON array of
-- {id, source, category, payload}, payload being the JSON text to store: one round trip (and
-- without an idempotency key no transaction around it, db.write_statement); the count trigger
-- runs once; the events' foreign key is checked at the end of the statement.
WITH created AS (
    INSERT INTO records (id, source, category, payload, status, attempts, created_at, updated_at, available_at)
    SELECT r.id, r.source, r.category, r.payload::json, 'pending', 0,
           %(now)s::timestamptz, %(now)s::timestamptz, %(now)s::timestamptz
    FROM json_to_recordset(%(rows)s::json) AS r(id uuid, source text, category text, payload text)
    RETURNING id
)
INSERT INTO record_events (record_id, from_status, to_status, at, request_id, detail)
SELECT id, NULL, 'pending', %(now)s::timestamptz, %(request_id)s, NULL FROM created;

-- name: get_record
-- Fetch one record by id.
SELECT {record_columns} FROM records WHERE id = %(id)s;

-- name: lock_record
-- Fetch and row-lock one record for a state change; concurrent callers queue here.
SELECT {record_columns} FROM records WHERE id = %(id)s FOR UPDATE;

-- name: set_outcome
-- Store a transition's new state; the status guard makes a lost race change nothing.
UPDATE records
SET status = %(to_status)s, result = %(result)s::json, classification = %(classification)s, score = %(score)s,
    error = %(error)s, attempts = attempts + %(attempt)s, updated_at = %(now)s,
    processed_at = %(processed_at)s, available_at = COALESCE(%(available_at)s, available_at)
WHERE id = %(id)s AND status = %(from_status)s
RETURNING {record_columns};

-- name: insert_event
-- Append one entry to a record's audit trail.
INSERT INTO record_events (record_id, from_status, to_status, at, request_id, detail)
VALUES (%(record_id)s, %(from_status)s, %(to_status)s, %(now)s, %(request_id)s, %(detail)s);

-- name: set_outcomes
-- set_outcome for a batch of locked records (states.store_transitions), from a JSON array of its
-- parameters: one statement, so the count trigger runs once for the batch (migration 0009).
UPDATE records
SET status = o.to_status, result = o.result::json, classification = o.classification, score = o.score,
    error = o.error, attempts = records.attempts + o.attempt, updated_at = o.now::timestamptz,
    processed_at = o.processed_at::timestamptz,
    available_at = COALESCE(o.available_at::timestamptz, records.available_at)
FROM json_to_recordset(%(outcomes)s::json) AS o(id uuid, from_status text, to_status text, result text,
                                                classification text, score float8, error text, attempt int,
                                                now text, processed_at text, available_at text)
WHERE records.id = o.id AND records.status = o.from_status
RETURNING records.id;

-- name: insert_events
-- insert_event for a batch, from a JSON array of its parameters.
INSERT INTO record_events (record_id, from_status, to_status, at, request_id, detail)
SELECT e.record_id, e.from_status, e.to_status, e.now::timestamptz, e.request_id, e.detail
FROM json_to_recordset(%(events)s::json) AS e(record_id uuid, from_status text, to_status text, now text,
                                              request_id text, detail text);

-- name: list_events
-- A record's audit trail, oldest first.
SELECT record_id::text AS record_id, from_status, to_status,
       to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS at, request_id, detail
FROM record_events WHERE record_id = %(record_id)s ORDER BY id;

-- name: claim_pending_plan
-- Before claim_pending, in its transaction: walk ix_records_pending_queue, which gives the records
-- in the claim's order. Statistics gathered while the queue was empty (autovacuum's analyze after
-- a drain) estimate one pending record, and PostgreSQL may then read every pending one through
-- (status, id) and sort them: 28 ms a claim among 20,000 (docs/engine.md, "The claim's plan").
SET LOCAL enable_sort = off;

-- name: claim_pending_plan_end
-- After claim_pending: the transaction's own statements plan as usual.
SET LOCAL enable_sort TO DEFAULT;

-- name: claim_pending
-- Claim the next eligible pending records; rows another worker holds are skipped, not waited for.
SELECT {record_columns} FROM records
WHERE status = 'pending' AND available_at <= %(now)s::timestamptz
ORDER BY records.available_at, records.id
LIMIT %(limit)s FOR UPDATE SKIP LOCKED;

-- name: list_records
-- One page of records; {filters} and {order} are whitelisted fragments below. The page's ids
-- are found first, so rows skipped by OFFSET are never formatted (PostgreSQL would compute
-- the select list of every skipped row).
SELECT {record_columns}
FROM (SELECT id FROM records WHERE {filters} ORDER BY {order} LIMIT %(limit)s OFFSET %(offset)s) AS page
JOIN records USING (id)
ORDER BY {order};

-- name: list_records_with_total
-- list_records and its total from the maintained counts (count_from_counts: no date filter) in
-- one statement, one snapshot and one round trip (BEGIN, the two and COMMIT were four). {after}
-- is a cursor's position, the page's alone. Every row carries the total; a page with no records
-- is one row of NULLs beside it.
SELECT {record_columns}, total.total
FROM ({count_from_counts}) AS total
LEFT JOIN ((SELECT id FROM records WHERE {filters} AND {after} ORDER BY {order}
            LIMIT %(limit)s OFFSET %(offset)s) AS page
           JOIN records USING (id)) ON TRUE
ORDER BY {order};

-- name: count_records
-- How many records match the filters.
SELECT count(*) AS total FROM records WHERE {filters};

-- name: filter.status
-- Listing and report filter.
status = %(status)s

-- name: filter.category
-- Listing and report filter.
category = %(category)s

-- name: filter.source
-- Listing and report filter.
source = %(source)s

-- name: filter.status.led
-- filter.status, for a listing that walks (status, created_at, id) and checks its category or
-- source row by row (records.ListingPlanner: a status's records bunch in time, a category's do
-- not). Written as a range, with the status first in the order below, so that no other index
-- gives the order: with `status = ...` the planner may walk (category, created_at, id) instead.
status >= %(status)s AND status <= %(status)s

-- name: filter.category.beside_status
-- filter.category, checked on a status-led walk.
category = %(category)s

-- name: filter.source.beside_status
-- filter.source, checked on a status-led walk.
source = %(source)s

-- name: order.created_at.asc.status_led
-- order.created_at.asc on a status-led walk: the same rows in the same order, the status being one.
records.status ASC, records.created_at ASC, records.id ASC

-- name: order.created_at.desc.status_led
-- order.created_at.desc on a status-led walk.
records.status DESC, records.created_at DESC, records.id DESC

-- name: filter.created_from
-- Inclusive lower bound on created_at.
created_at >= %(created_from)s

-- name: filter.created_to
-- Inclusive upper bound on created_at.
created_at <= %(created_to)s

-- name: order.created_at.asc
-- Sort fragment; ties break by id in the same direction. Columns are qualified:
-- unqualified, ORDER BY would sort by the formatted output columns and miss the indexes.
records.created_at ASC, records.id ASC

-- name: order.created_at.desc
-- Sort fragment.
records.created_at DESC, records.id DESC

-- name: order.status.asc
-- Sort fragment.
records.status ASC, records.id ASC

-- name: order.status.desc
-- Sort fragment.
records.status DESC, records.id DESC

-- name: order.category.asc
-- Sort fragment.
records.category ASC, records.id ASC

-- name: order.category.desc
-- Sort fragment.
records.category DESC, records.id DESC

-- name: order.source.asc
-- Sort fragment.
records.source ASC, records.id ASC

-- name: order.source.desc
-- Sort fragment.
records.source DESC, records.id DESC

-- name: after.created_at.asc
-- Rows after the cursor for sort_by=created_at, sort_order=asc.
(created_at, id) > (%(cursor_value)s::timestamptz, %(cursor_id)s::uuid)

-- name: after.created_at.desc
-- Rows after the cursor for sort_by=created_at, sort_order=desc.
(created_at, id) < (%(cursor_value)s::timestamptz, %(cursor_id)s::uuid)

-- name: after.status.asc
-- Rows after the cursor for sort_by=status, sort_order=asc.
(status, id) > (%(cursor_value)s, %(cursor_id)s::uuid)

-- name: after.status.desc
-- Rows after the cursor for sort_by=status, sort_order=desc.
(status, id) < (%(cursor_value)s, %(cursor_id)s::uuid)

-- name: after.category.asc
-- Rows after the cursor for sort_by=category, sort_order=asc.
(category, id) > (%(cursor_value)s, %(cursor_id)s::uuid)

-- name: after.category.desc
-- Rows after the cursor for sort_by=category, sort_order=desc.
(category, id) < (%(cursor_value)s, %(cursor_id)s::uuid)

-- name: after.source.asc
-- Rows after the cursor for sort_by=source, sort_order=asc.
(source, id) > (%(cursor_value)s, %(cursor_id)s::uuid)

-- name: after.source.desc
-- Rows after the cursor for sort_by=source, sort_order=desc.
(source, id) < (%(cursor_value)s, %(cursor_id)s::uuid)

-- name: export_records
-- Every record matching the filters, in the chosen order, for streaming export.
SELECT {record_columns} FROM records WHERE {filters} ORDER BY {order};
