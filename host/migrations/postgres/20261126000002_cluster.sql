-- Several hosts on one database (PostgreSQL, with the NATS broker) share the work.

-- Each running host and when it last said it is alive: a host silent for longer than the lease
-- is dead, and the others take its sagas over.
CREATE TABLE hosts (
    id           TEXT   PRIMARY KEY,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);

-- What the services loaded on each host consume: where a host addresses a command or an event
-- for a service it does not load itself.
CREATE TABLE host_topics (
    host    TEXT NOT NULL,
    service TEXT NOT NULL,
    kind    TEXT NOT NULL,
    topic   TEXT NOT NULL,
    PRIMARY KEY (host, service, kind, topic)
);

-- The host that stored a saga's last transition: it keeps the saga's timers, until it dies.
ALTER TABLE sagas ADD COLUMN owner TEXT;
CREATE INDEX sagas_by_owner ON sagas (owner, timer_at);
