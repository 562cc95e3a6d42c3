-- Requests sent with an Idempotency-Key, per service and route: claimed (claimed_by, claimed_at)
-- before the handler runs, answered (status, response) in the handler's own transaction, and
-- forgotten after --idempotency-hours. request_hash tells a repeat from another request that
-- reuses the key.
CREATE TABLE idempotency (
    service TEXT NOT NULL,
    route TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    claimed_by TEXT NOT NULL,
    claimed_at BIGINT NOT NULL,
    status INTEGER,
    response TEXT,
    PRIMARY KEY (service, route, idempotency_key)
);
CREATE INDEX idempotency_by_age ON idempotency (claimed_at);
