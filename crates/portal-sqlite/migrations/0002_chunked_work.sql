-- Batch jobs claim chunks of consecutive accounts, not single accounts: a work item is the
-- accounts from account_id (the chunk's first) to last_account_id, inclusive.
ALTER TABLE work_items ADD COLUMN last_account_id BLOB;
UPDATE work_items SET last_account_id = account_id;
