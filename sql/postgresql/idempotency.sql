-- Stored responses of requests sent with an Idempotency-Key (PostgreSQL: a concurrent claim
-- of the same key waits for the first transaction, then finds the key taken).

-- name: idempotency.claim
-- Claim a key for this request; returns no row when the key is already taken.
INSERT INTO idempotency_keys (key, request_hash, created_at)
VALUES (%(key)s, %(request_hash)s, %(now)s)
ON CONFLICT (key) DO NOTHING
RETURNING key;

-- name: idempotency.get
-- The stored request fingerprint and response of a key.
SELECT request_hash, status_code, response FROM idempotency_keys WHERE key = %(key)s;

-- name: idempotency.store
-- Keep the response of the request that claimed the key.
UPDATE idempotency_keys SET status_code = %(status_code)s, response = %(response)s WHERE key = %(key)s;

-- name: idempotency.expire
-- Forget keys older than the cut-off (run by the worker and `cleanup`, never by a request).
DELETE FROM idempotency_keys WHERE created_at < %(cutoff)s;
