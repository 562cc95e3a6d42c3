-- Deploys reach every host of a cluster (PostgreSQL, with the NATS broker): the deploying host
-- stores the version here and announces it; each host that runs the service loads it from here
-- and records what it made of it.

-- The bytes of component versions, by digest: what the cluster deployed, and every version
-- sagas run on, so that any host can resume a saga on the version it started with.
-- released_at: when a host last stopped using it as current (a call still running on it may
-- start a saga for a while).
CREATE TABLE component_versions (
    digest      TEXT   PRIMARY KEY,
    service     TEXT   NOT NULL,
    bytes       BLOB   NOT NULL,
    stored_at   INTEGER NOT NULL,
    released_at INTEGER
);

-- The cluster's current version of each service: the last deploy's, which every host that runs
-- the service loads (also at its start, over its components directory's file).
CREATE TABLE cluster_components (
    service     TEXT   PRIMARY KEY,
    digest      TEXT   NOT NULL,
    deployed_by TEXT   NOT NULL,
    deployed_at INTEGER NOT NULL
);

-- What each host runs: its current version of each service it loads, and the last cluster
-- deploy it could not load (failed) with the reason; deploy_id names the cluster deploy the row
-- last answered, so that the deploying host tells an answer to its deploy from an older one.
CREATE TABLE host_components (
    host           TEXT NOT NULL,
    service        TEXT NOT NULL,
    current_digest TEXT NOT NULL,
    failed_digest  TEXT,
    error          TEXT,
    deploy_id      TEXT,
    at             INTEGER NOT NULL,
    PRIMARY KEY (host, service)
);
