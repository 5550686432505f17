-- Batch jobs claim chunks of consecutive accounts, not single accounts: a work item is the
-- accounts from account_id (the chunk's first) to last_account_id, inclusive.
ALTER TABLE work_items ADD COLUMN last_account_id uuid;
UPDATE work_items SET last_account_id = account_id;
ALTER TABLE work_items ALTER COLUMN last_account_id SET NOT NULL;

-- Every payment and bill bumps its account's version: room on each page lets that stay a
-- heap-only update that touches no index.
ALTER TABLE accounts SET (fillfactor = 80);
