-- Accounts and everything billed and paid on them. Money is integer cents; ids are 16-byte
-- blobs; timestamps are RFC 3339 text in UTC; JSON is text.

CREATE TABLE accounts (
    id                BLOB PRIMARY KEY,
    version           INTEGER NOT NULL CHECK (version > 0),
    number            TEXT NOT NULL UNIQUE,
    holder_first_name TEXT NOT NULL,
    holder_last_name  TEXT NOT NULL,
    holder_search     TEXT NOT NULL,
    date_of_birth     TEXT NOT NULL,
    ssn_digest        TEXT NOT NULL,
    ssn_last4         TEXT NOT NULL,
    contact_email     TEXT,
    reminders         TEXT NOT NULL,
    created_at        TEXT NOT NULL
);

CREATE TABLE members (
    account_id          BLOB PRIMARY KEY REFERENCES accounts (id),
    username            TEXT NOT NULL,
    username_key        TEXT NOT NULL UNIQUE,
    email               TEXT NOT NULL,
    email_key           TEXT NOT NULL UNIQUE,
    ssn_digest          TEXT NOT NULL UNIQUE,
    ssn_sealed          BLOB NOT NULL,
    password_hash       TEXT NOT NULL,
    language            TEXT NOT NULL,
    email_verified_at   TEXT,
    email_code          TEXT,
    password_changed_at TEXT NOT NULL,
    created_at          TEXT NOT NULL
);

CREATE TABLE enrollments (
    id         BLOB PRIMARY KEY,
    account_id BLOB NOT NULL REFERENCES accounts (id),
    position   INTEGER NOT NULL,
    data       TEXT NOT NULL
);
CREATE INDEX enrollments_account ON enrollments (account_id);

CREATE TABLE payment_methods (
    id         BLOB PRIMARY KEY,
    account_id BLOB NOT NULL REFERENCES accounts (id),
    position   INTEGER NOT NULL,
    data       TEXT NOT NULL
);
CREATE INDEX payment_methods_account ON payment_methods (account_id);

CREATE TABLE mandates (
    id         BLOB PRIMARY KEY,
    account_id BLOB NOT NULL REFERENCES accounts (id),
    position   INTEGER NOT NULL,
    data       TEXT NOT NULL
);
CREATE INDEX mandates_account ON mandates (account_id);

CREATE TABLE plans (
    id         BLOB PRIMARY KEY,
    account_id BLOB NOT NULL REFERENCES accounts (id),
    position   INTEGER NOT NULL,
    data       TEXT NOT NULL
);
CREATE INDEX plans_account ON plans (account_id);

CREATE TABLE bills (
    id                BLOB PRIMARY KEY,
    account_id        BLOB NOT NULL REFERENCES accounts (id),
    position          INTEGER NOT NULL,
    enrollment_id     BLOB NOT NULL,
    kind_name         TEXT NOT NULL,
    kind              TEXT NOT NULL,
    coverage_month    TEXT NOT NULL,
    amount_cents      INTEGER NOT NULL CHECK (amount_cents >= 0),
    allocated_cents   INTEGER NOT NULL CHECK (allocated_cents >= 0),
    transferred_cents INTEGER NOT NULL CHECK (transferred_cents >= 0),
    due_date          TEXT NOT NULL,
    issued_on         TEXT NOT NULL,
    void              INTEGER NOT NULL,
    notices           TEXT NOT NULL,
    late_fee_assessed INTEGER NOT NULL
);
CREATE INDEX bills_account ON bills (account_id, position);
CREATE UNIQUE INDEX bills_one_premium_per_month
    ON bills (enrollment_id, coverage_month) WHERE kind_name IN ('binder', 'premium');

CREATE TABLE payments (
    id                  BLOB PRIMARY KEY,
    account_id          BLOB NOT NULL REFERENCES accounts (id),
    position            INTEGER NOT NULL,
    reference           TEXT NOT NULL UNIQUE,
    gateway_id          TEXT UNIQUE,
    amount_cents        INTEGER NOT NULL CHECK (amount_cents > 0),
    refunded_cents      INTEGER NOT NULL CHECK (refunded_cents >= 0),
    status              TEXT NOT NULL,
    idempotency_key     TEXT NOT NULL,
    initiated_at        TEXT NOT NULL,
    initiated_on        TEXT NOT NULL,
    expected_settlement TEXT,
    data                TEXT NOT NULL
);
CREATE INDEX payments_account ON payments (account_id, position);

CREATE TABLE allocations (
    payment_id   BLOB NOT NULL REFERENCES payments (id),
    bill_id      BLOB NOT NULL REFERENCES bills (id),
    position     INTEGER NOT NULL,
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    PRIMARY KEY (payment_id, bill_id)
);
CREATE INDEX allocations_bill ON allocations (bill_id);

CREATE TABLE sessions (
    digest       TEXT PRIMARY KEY,
    id           BLOB NOT NULL,
    principal    TEXT NOT NULL,
    account_id   BLOB,
    created_at   TEXT NOT NULL,
    last_seen_at TEXT NOT NULL
);
CREATE INDEX sessions_account ON sessions (account_id);

CREATE TABLE reset_tokens (
    digest     TEXT PRIMARY KEY,
    account_id BLOB NOT NULL REFERENCES accounts (id),
    expires_at TEXT NOT NULL,
    used_at    TEXT
);

CREATE TABLE login_throttles (
    key               TEXT PRIMARY KEY,
    failures          INTEGER NOT NULL,
    window_started_at TEXT NOT NULL,
    locked_until      TEXT
);

CREATE TABLE idempotency_records (
    scope          TEXT NOT NULL,
    key            TEXT NOT NULL,
    request_digest TEXT NOT NULL,
    payment_id     BLOB NOT NULL,
    account_id     BLOB NOT NULL,
    created_at     TEXT NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE TABLE audit_log (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id BLOB NOT NULL,
    at         TEXT NOT NULL,
    actor      TEXT NOT NULL,
    entity     TEXT NOT NULL,
    action     TEXT NOT NULL,
    detail     TEXT NOT NULL
);
CREATE INDEX audit_log_account ON audit_log (account_id, seq);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;

CREATE TABLE outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           BLOB NOT NULL UNIQUE,
    dedupe_key   TEXT NOT NULL UNIQUE,
    account_id   BLOB NOT NULL,
    notice       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    due_at       TEXT,
    leased_by    TEXT,
    leased_until TEXT,
    sent_at      TEXT,
    message_id   TEXT,
    dead         INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT
);
CREATE INDEX outbox_due ON outbox (seq) WHERE sent_at IS NULL AND dead = 0;

CREATE TABLE work_items (
    job          TEXT NOT NULL,
    period       TEXT NOT NULL,
    account_id   BLOB NOT NULL,
    leased_by    TEXT,
    leased_until TEXT,
    finished_at  TEXT,
    PRIMARY KEY (job, period, account_id)
);
