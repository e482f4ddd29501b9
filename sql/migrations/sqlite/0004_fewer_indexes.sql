-- Fewer index writes per insert (each index costs a page write per commit):
-- (category, id, status) serves both the sort by category and the summary's
-- grouping by category and status, so (category, status, id) goes; the same for
-- source. The processed_at index only holds records that have a processed_at.

-- migrate:up
DROP INDEX ix_records_category_status;
DROP INDEX ix_records_source_status;
DROP INDEX ix_records_category_id;
DROP INDEX ix_records_source_id;
DROP INDEX ix_records_status_processed;
CREATE INDEX ix_records_category_id_status ON records (category, id, status);
CREATE INDEX ix_records_source_id_status ON records (source, id, status);
CREATE INDEX ix_records_finished ON records (status, processed_at) WHERE processed_at IS NOT NULL;

-- migrate:down
DROP INDEX ix_records_finished;
DROP INDEX ix_records_source_id_status;
DROP INDEX ix_records_category_id_status;
CREATE INDEX ix_records_status_processed ON records (status, processed_at);
CREATE INDEX ix_records_source_id ON records (source, id);
CREATE INDEX ix_records_category_id ON records (category, id);
CREATE INDEX ix_records_source_status ON records (source, status, id);
CREATE INDEX ix_records_category_status ON records (category, status, id);
