-- The saga-host schema. PostgreSQL has the same tables in ../postgres; keep them in step.

-- Committed state of every aggregate (what queries read). A deleted aggregate keeps its row,
-- flagged, so that its uuid is never reused.
CREATE TABLE snapshots (
    service    TEXT    NOT NULL,
    uuid       TEXT    NOT NULL,
    aggregate  TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    data       TEXT    NOT NULL,
    deleted    INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (service, uuid)
);
CREATE INDEX snapshots_by_type ON snapshots (service, aggregate, created_at);

-- The event log: one row per aggregate version.
CREATE TABLE events (
    service    TEXT    NOT NULL,
    uuid       TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    aggregate  TEXT    NOT NULL,
    action     TEXT    NOT NULL,
    diff       TEXT    NOT NULL,
    saga       TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (service, uuid, version)
);

-- Writes made for a running saga: the latest state per aggregate (its primary key is the lock
-- that keeps other writers out until the saga ends), the events, and the messages held back.
CREATE TABLE staged_snapshots (
    service      TEXT    NOT NULL,
    uuid         TEXT    NOT NULL,
    saga         TEXT    NOT NULL,
    aggregate    TEXT    NOT NULL,
    base_version INTEGER NOT NULL,
    version      INTEGER NOT NULL,
    data         TEXT    NOT NULL,
    deleted      INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (service, uuid)
);
CREATE INDEX staged_snapshots_by_saga ON staged_snapshots (saga, service, aggregate);

CREATE TABLE staged_events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    saga       TEXT    NOT NULL,
    service    TEXT    NOT NULL,
    uuid       TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    aggregate  TEXT    NOT NULL,
    action     TEXT    NOT NULL,
    diff       TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX staged_events_by_saga ON staged_events (saga, seq);

CREATE TABLE staged_messages (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    saga     TEXT NOT NULL,
    id       TEXT NOT NULL,
    consumer TEXT NOT NULL,
    body     TEXT NOT NULL
);
CREATE INDEX staged_messages_by_saga ON staged_messages (saga, seq);

-- The in-process broker's durable queue. A row is deleted in the transaction that commits its
-- handling, so a handled message is never delivered again.
CREATE TABLE queue (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL,
    consumer     TEXT    NOT NULL,
    body         TEXT    NOT NULL,
    attempts     INTEGER NOT NULL,
    available_at INTEGER NOT NULL
);

-- Messages consumed, by consumer and message id, recorded in the transaction of their handling:
-- a second delivery of the same message (a redelivery, a resend after a timeout) changes
-- nothing. Rows older than the longest redelivery horizon are pruned.
CREATE TABLE consumed (
    consumer   TEXT    NOT NULL,
    message_id TEXT    NOT NULL,
    at         INTEGER NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX consumed_by_age ON consumed (at);

-- Messages whose handling kept failing, kept for an operator to look at and redrive.
CREATE TABLE dead_letters (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT    NOT NULL,
    consumer   TEXT    NOT NULL,
    body       TEXT    NOT NULL,
    attempts   INTEGER NOT NULL,
    error      TEXT    NOT NULL,
    failed_at  INTEGER NOT NULL
);

-- Saga executions; `state` is the orchestrator's JSON (context, cursor, steps). `timer_at` is
-- when the execution next needs attention (a reply deadline, a retry, its own deadline), so
-- that a restarted host finds every timer.
CREATE TABLE sagas (
    id         TEXT    PRIMARY KEY,
    service    TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    -- The digest of the component version the saga runs on until it ends.
    version    TEXT    NOT NULL,
    status     TEXT    NOT NULL,
    state      TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    revision   INTEGER NOT NULL,
    timer_at   INTEGER
);
CREATE INDEX sagas_by_status ON sagas (status, created_at);
CREATE INDEX sagas_by_timer ON sagas (timer_at);
CREATE INDEX sagas_by_version ON sagas (service, version, status);
