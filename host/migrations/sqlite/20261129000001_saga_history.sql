-- The history of every saga: what happened to it, transition by transition, appended in the
-- transaction that stores the transition. One row per stored transition (its revision), holding
-- that transition's events as a JSON array, oldest first.
CREATE TABLE saga_history (
    saga     TEXT    NOT NULL,
    revision INTEGER NOT NULL,
    entries  TEXT    NOT NULL,
    PRIMARY KEY (saga, revision)
);

-- Ended sagas are pruned after their retention, oldest first.
CREATE INDEX sagas_by_end ON sagas (status, updated_at);
