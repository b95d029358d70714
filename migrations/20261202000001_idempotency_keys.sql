-- Idempotency keys of writes (api/src/idempotency.rs): per user and key, the request
-- it was first used for, the event that request publishes, the lease of the request in
-- progress and, once the broker acknowledged the event, the answer. Kept 24 hours.
CREATE TABLE idempotency_keys (
    user_id     BIGINT      NOT NULL,
    key         TEXT        NOT NULL,
    request     JSONB       NOT NULL,
    event       JSONB       NOT NULL,
    lease_until TIMESTAMPTZ NOT NULL,
    status      INTEGER,
    response    JSONB,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);

-- The retention sweep deletes by age.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
