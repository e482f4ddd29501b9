-- Indexes for every listing sort (keyset pages walk them in order), for the
-- time series and the dashboard's latest failures (status, processed_at).

-- migrate:up
CREATE INDEX ix_records_status_id ON records (status, id);
CREATE INDEX ix_records_category_id ON records (category, id);
CREATE INDEX ix_records_source_id ON records (source, id);
CREATE INDEX ix_records_status_processed ON records (status, processed_at);

-- migrate:down
DROP INDEX ix_records_status_processed;
DROP INDEX ix_records_source_id;
DROP INDEX ix_records_category_id;
DROP INDEX ix_records_status_id;
