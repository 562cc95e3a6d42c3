-- The indexes that only unfinished sagas need hold only those. Most sagas end in the
-- transaction that starts them; each of these indexes cost every one an entry (a page of the
-- commit, and about 160 bytes on disk between them) that nothing ever read.
-- Taking over the timers of a host that died (`claim_orphaned_sagas`: timer_at IS NOT NULL).
DROP INDEX sagas_by_timer;
CREATE INDEX sagas_by_timer ON sagas (timer_at) WHERE timer_at IS NOT NULL;
DROP INDEX sagas_by_owner;
CREATE INDEX sagas_by_owner ON sagas (owner, timer_at) WHERE timer_at IS NOT NULL;
-- The versions that sagas still hold (`prune_versions`, in these words: a saga whose
-- compensation failed waits for an operator, on its version).
DROP INDEX sagas_by_version;
CREATE INDEX sagas_by_version ON sagas (service, version)
    WHERE status NOT IN ('finished', 'errored');
