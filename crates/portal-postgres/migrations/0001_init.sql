-- Accounts and everything billed and paid on them. Money is integer cents.

CREATE TABLE accounts (
    id                uuid PRIMARY KEY,
    version           bigint NOT NULL CHECK (version > 0),
    number            text NOT NULL,
    holder_first_name text NOT NULL,
    holder_last_name  text NOT NULL,
    holder_search     text NOT NULL,
    date_of_birth     date NOT NULL,
    ssn_digest        text NOT NULL,
    ssn_last4         text NOT NULL,
    contact_email     text,
    reminders         jsonb NOT NULL,
    created_at        timestamptz NOT NULL,
    CONSTRAINT accounts_number_unique UNIQUE (number)
);

CREATE TABLE members (
    account_id          uuid PRIMARY KEY REFERENCES accounts (id),
    username            text NOT NULL,
    username_key        text NOT NULL,
    email               text NOT NULL,
    email_key           text NOT NULL,
    ssn_digest          text NOT NULL,
    ssn_sealed          bytea NOT NULL,
    password_hash       text NOT NULL,
    language            text NOT NULL,
    email_verified_at   timestamptz,
    email_code          jsonb,
    password_changed_at timestamptz NOT NULL,
    created_at          timestamptz NOT NULL,
    CONSTRAINT members_username_unique UNIQUE (username_key),
    CONSTRAINT members_email_unique UNIQUE (email_key),
    CONSTRAINT members_ssn_unique UNIQUE (ssn_digest)
);

-- Small per-account collections, written whole with the account.
CREATE TABLE enrollments (
    id         uuid PRIMARY KEY,
    account_id uuid NOT NULL REFERENCES accounts (id),
    position   integer NOT NULL,
    data       jsonb NOT NULL
);
CREATE INDEX enrollments_account ON enrollments (account_id);

CREATE TABLE payment_methods (
    id         uuid PRIMARY KEY,
    account_id uuid NOT NULL REFERENCES accounts (id),
    position   integer NOT NULL,
    data       jsonb NOT NULL
);
CREATE INDEX payment_methods_account ON payment_methods (account_id);

CREATE TABLE mandates (
    id         uuid PRIMARY KEY,
    account_id uuid NOT NULL REFERENCES accounts (id),
    position   integer NOT NULL,
    data       jsonb NOT NULL
);
CREATE INDEX mandates_account ON mandates (account_id);

CREATE TABLE plans (
    id         uuid PRIMARY KEY,
    account_id uuid NOT NULL REFERENCES accounts (id),
    position   integer NOT NULL,
    data       jsonb NOT NULL
);
CREATE INDEX plans_account ON plans (account_id);

CREATE TABLE bills (
    id                uuid PRIMARY KEY,
    account_id        uuid NOT NULL REFERENCES accounts (id),
    position          bigint NOT NULL,
    enrollment_id     uuid NOT NULL,
    kind_name         text NOT NULL,
    kind              jsonb NOT NULL,
    coverage_month    date NOT NULL,
    amount_cents      bigint NOT NULL CHECK (amount_cents >= 0),
    allocated_cents   bigint NOT NULL CHECK (allocated_cents >= 0),
    transferred_cents bigint NOT NULL CHECK (transferred_cents >= 0),
    due_date          date NOT NULL,
    issued_on         date NOT NULL,
    void              boolean NOT NULL,
    notices           jsonb NOT NULL,
    late_fee_assessed boolean NOT NULL
);
CREATE INDEX bills_account ON bills (account_id, position);
-- One premium bill (binder or regular) per enrollment and coverage month.
CREATE UNIQUE INDEX bills_one_premium_per_month
    ON bills (enrollment_id, coverage_month) WHERE kind_name IN ('binder', 'premium');

CREATE TABLE payments (
    id                  uuid PRIMARY KEY,
    account_id          uuid NOT NULL REFERENCES accounts (id),
    position            bigint NOT NULL,
    reference           text NOT NULL,
    gateway_id          text,
    amount_cents        bigint NOT NULL CHECK (amount_cents > 0),
    refunded_cents      bigint NOT NULL CHECK (refunded_cents >= 0),
    status              text NOT NULL,
    idempotency_key     text NOT NULL,
    initiated_at        timestamptz NOT NULL,
    initiated_on        date NOT NULL,
    expected_settlement date,
    data                jsonb NOT NULL,
    CONSTRAINT payments_reference_unique UNIQUE (reference),
    CONSTRAINT payments_gateway_id_unique UNIQUE (gateway_id)
);
CREATE INDEX payments_account ON payments (account_id, position);
CREATE INDEX payments_pending ON payments (status) WHERE status = 'pending';

CREATE TABLE allocations (
    payment_id   uuid NOT NULL REFERENCES payments (id),
    bill_id      uuid NOT NULL REFERENCES bills (id),
    position     integer NOT NULL,
    amount_cents bigint NOT NULL CHECK (amount_cents > 0),
    PRIMARY KEY (payment_id, bill_id)
);
CREATE INDEX allocations_bill ON allocations (bill_id);

-- Logins and the records around them.
CREATE TABLE sessions (
    digest       text PRIMARY KEY,
    id           uuid NOT NULL,
    principal    jsonb NOT NULL,
    account_id   uuid,
    created_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL
);
CREATE INDEX sessions_account ON sessions (account_id);

CREATE TABLE reset_tokens (
    digest     text PRIMARY KEY,
    account_id uuid NOT NULL REFERENCES accounts (id),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);

CREATE TABLE login_throttles (
    key               text PRIMARY KEY,
    failures          integer NOT NULL,
    window_started_at timestamptz NOT NULL,
    locked_until      timestamptz
);

CREATE TABLE idempotency_records (
    scope          text NOT NULL,
    key            text NOT NULL,
    request_digest text NOT NULL,
    payment_id     uuid NOT NULL,
    account_id     uuid NOT NULL,
    created_at     timestamptz NOT NULL,
    CONSTRAINT idempotency_records_pkey PRIMARY KEY (scope, key)
);

-- The audit log only ever grows.
CREATE TABLE audit_log (
    seq        bigserial PRIMARY KEY,
    account_id uuid NOT NULL,
    at         timestamptz NOT NULL,
    actor      jsonb NOT NULL,
    entity     text NOT NULL,
    action     text NOT NULL,
    detail     text NOT NULL
);
CREATE INDEX audit_log_account ON audit_log (account_id, seq);

CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END;
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();

-- Transactional outbox.
CREATE TABLE outbox (
    seq          bigserial UNIQUE,
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    dedupe_key   text NOT NULL,
    account_id   uuid NOT NULL,
    notice       jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    attempts     integer NOT NULL DEFAULT 0,
    due_at       timestamptz,
    leased_by    text,
    leased_until timestamptz,
    sent_at      timestamptz,
    message_id   text,
    dead         boolean NOT NULL DEFAULT false,
    last_error   text,
    CONSTRAINT outbox_dedupe_unique UNIQUE (dedupe_key)
);
CREATE INDEX outbox_due ON outbox (seq) WHERE sent_at IS NULL AND NOT dead;

-- Batch-job work claims.
CREATE TABLE work_items (
    job          text NOT NULL,
    period       text NOT NULL,
    account_id   uuid NOT NULL,
    leased_by    text,
    leased_until timestamptz,
    finished_at  timestamptz,
    PRIMARY KEY (job, period, account_id)
);
CREATE INDEX work_items_open ON work_items (job, period, account_id) WHERE finished_at IS NULL;
