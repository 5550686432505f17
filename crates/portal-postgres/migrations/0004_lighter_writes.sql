-- Payloads that are only ever written and read back whole (never searched inside) are stored
-- as json: the text as written, checked but not converted to and from the binary jsonb form
-- on every insert and read. The billing run writes one of each per bill.
ALTER TABLE bills ALTER COLUMN kind TYPE json USING kind::json,
                  ALTER COLUMN notices TYPE json USING notices::json;
ALTER TABLE audit_log ALTER COLUMN actor TYPE json USING actor::json;
ALTER TABLE outbox ALTER COLUMN notice TYPE json USING notice::json;

-- The outbox's seq comes from its own sequence, so its unique index only cost every notice
-- an index entry. Delivery reads unsent messages through outbox_due; dead letters get their
-- own small index.
ALTER TABLE outbox DROP CONSTRAINT outbox_seq_key;
CREATE INDEX outbox_dead ON outbox (seq) WHERE dead;
