-- Records: create, fetch, list, and state changes.

-- name: record_columns
-- The columns of a record as the API returns them (JSON as text, times as RFC 3339 UTC).
id, source, category, payload, status, result, classification, score, error, attempts,
created_at, updated_at, processed_at

-- name: insert_record
-- Create one pending record.
INSERT INTO records (id, source, category, payload, status, attempts, created_at, updated_at, available_at)
VALUES (:id, :source, :category, :payload, 'pending', 0, :now, :now, :now);

-- name: insert_record_set
-- Create pending records in bulk from a JSON array of {id, source, category, payload}, payload
-- being the JSON text to store.
INSERT INTO records (id, source, category, payload, status, attempts, created_at, updated_at, available_at)
SELECT json_extract(value, '$.id'), json_extract(value, '$.source'), json_extract(value, '$.category'),
       json_extract(value, '$.payload'), 'pending', 0, :now, :now, :now
FROM json_each(:rows);

-- name: insert_creation_events
-- The creation events of records created in bulk, from a JSON array of their ids.
INSERT INTO record_events (record_id, from_status, to_status, at, request_id, detail)
SELECT value, NULL, 'pending', :now, :request_id, NULL FROM json_each(:ids);

-- name: get_record
-- Fetch one record by id.
SELECT {record_columns} FROM records WHERE id = :id;

-- name: lock_record
-- Fetch one record for a state change; BEGIN IMMEDIATE already holds the write lock.
SELECT {record_columns} FROM records WHERE id = :id;

-- name: set_outcome
-- Store a transition's new state; the status guard makes a lost race change nothing.
UPDATE records
SET status = :to_status, result = :result, classification = :classification, score = :score,
    error = :error, attempts = attempts + :attempt, updated_at = :now,
    processed_at = :processed_at, available_at = COALESCE(:available_at, available_at)
WHERE id = :id AND status = :from_status
RETURNING {record_columns};

-- name: insert_event
-- Append one entry to a record's audit trail.
INSERT INTO record_events (record_id, from_status, to_status, at, request_id, detail)
VALUES (:record_id, :from_status, :to_status, :now, :request_id, :detail);

-- name: list_events
-- A record's audit trail, oldest first.
SELECT record_id, from_status, to_status, at, request_id, detail
FROM record_events WHERE record_id = :record_id ORDER BY id;

-- name: claim_pending
-- The next eligible pending records; BEGIN IMMEDIATE already excludes other workers.
SELECT {record_columns} FROM records
WHERE status = 'pending' AND available_at <= :now
ORDER BY available_at, id
LIMIT :limit ;

-- name: list_records
-- One page of records; {filters} and {order} are whitelisted fragments below.
SELECT {record_columns} FROM records WHERE {filters} ORDER BY {order}
LIMIT :limit OFFSET :offset;

-- name: count_records
-- How many records match the filters.
SELECT count(*) AS total FROM records WHERE {filters};

-- name: filter.status
-- Listing and report filter.
status = :status

-- name: filter.category
-- Listing and report filter.
category = :category

-- name: filter.source
-- Listing and report filter.
source = :source

-- name: filter.status.led
-- filter.status, for a listing that walks (status, created_at, id) and checks its category or
-- source row by row (records.ListingPlanner: a status's records bunch in time, a category's do not).
status = :status

-- name: filter.category.beside_status
-- filter.category, checked on a status-led walk: the `+` keeps SQLite off the category's indexes.
+category = :category

-- name: filter.source.beside_status
-- filter.source, checked on a status-led walk.
+source = :source

-- name: order.created_at.asc.status_led
-- order.created_at.asc on a status-led walk.
created_at ASC, id ASC

-- name: order.created_at.desc.status_led
-- order.created_at.desc on a status-led walk.
created_at DESC, id DESC

-- name: filter.created_from
-- Inclusive lower bound on created_at.
created_at >= :created_from

-- name: filter.created_to
-- Inclusive upper bound on created_at.
created_at <= :created_to

-- name: order.created_at.asc
-- Sort fragment; ties break by id in the same direction.
created_at ASC, id ASC

-- name: order.created_at.desc
-- Sort fragment.
created_at DESC, id DESC

-- name: order.status.asc
-- Sort fragment.
status ASC, id ASC

-- name: order.status.desc
-- Sort fragment.
status DESC, id DESC

-- name: order.category.asc
-- Sort fragment.
category ASC, id ASC

-- name: order.category.desc
-- Sort fragment.
category DESC, id DESC

-- name: order.source.asc
-- Sort fragment.
source ASC, id ASC

-- name: order.source.desc
-- Sort fragment.
source DESC, id DESC

-- name: after.created_at.asc
-- Rows after the cursor for sort_by=created_at, sort_order=asc.
(created_at, id) > (:cursor_value, :cursor_id)

-- name: after.created_at.desc
-- Rows after the cursor for sort_by=created_at, sort_order=desc.
(created_at, id) < (:cursor_value, :cursor_id)

-- name: after.status.asc
-- Rows after the cursor for sort_by=status, sort_order=asc.
(status, id) > (:cursor_value, :cursor_id)

-- name: after.status.desc
-- Rows after the cursor for sort_by=status, sort_order=desc.
(status, id) < (:cursor_value, :cursor_id)

-- name: after.category.asc
-- Rows after the cursor for sort_by=category, sort_order=asc.
(category, id) > (:cursor_value, :cursor_id)

-- name: after.category.desc
-- Rows after the cursor for sort_by=category, sort_order=desc.
(category, id) < (:cursor_value, :cursor_id)

-- name: after.source.asc
-- Rows after the cursor for sort_by=source, sort_order=asc.
(source, id) > (:cursor_value, :cursor_id)

-- name: after.source.desc
-- Rows after the cursor for sort_by=source, sort_order=desc.
(source, id) < (:cursor_value, :cursor_id)

-- name: export_records
-- Every record matching the filters, in the chosen order, for streaming export.
SELECT {record_columns} FROM records WHERE {filters} ORDER BY {order};
