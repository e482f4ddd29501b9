-- PostgreSQL's counter shards take an advisory lock from this version on (see its 0007).
-- SQLite has one writer at a time and one shard: nothing to do. The version exists on
-- both so that both databases share one history.

-- migrate:up
SELECT 1;

-- migrate:down
SELECT 1;
