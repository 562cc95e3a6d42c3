//! The storage suite: one set of behaviours, run against both backends — a SQLite file and a
//! fresh database on the local PostgreSQL server — through the same `Storage` API the host uses.
//! Commits, version conflicts, writes staged under a saga (the saga's lock, promotion, discard),
//! exactly-once consumption, saga revisions and timers, the queue and dead letters, `find` with
//! its SQL prefilter and indexes, and group commit keeping one transaction's failure to itself.

mod common;

use std::path::Path;

use common::{PgDatabase, TempDir};
use saga_host::saga::Status;
use saga_host::storage::condition::{CompareOp, Condition, FieldPath, Node};
use saga_host::storage::{
    Action, Aggregates, Consumed, Consumes, DeadLettering, Executions, Hosts, NewMessage, Queue,
    Resolve, SagaFilter, SagaKey, SagaRow, Storage, StorageError, TopicKind, Transaction,
    Transactions, Write, now_ms,
};
use uuid::Uuid;

/// A storage on one backend, and what keeps its database alive.
struct Backend {
    storage: Storage,
    url: String,
    _sqlite: Option<TempDir>,
    _postgres: Option<PgDatabase>,
}

async fn sqlite() -> Backend {
    let dir = TempDir::new("storage");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("db.sqlite").display()
    );
    Backend {
        storage: Storage::open(&url).await.expect("open SQLite"),
        url,
        _sqlite: Some(dir),
        _postgres: None,
    }
}

async fn postgres() -> Backend {
    let database = PgDatabase::create("storage").await;
    Backend {
        storage: Storage::open(&database.url).await.expect("open PostgreSQL"),
        url: database.url.clone(),
        _sqlite: None,
        _postgres: Some(database),
    }
}

impl Backend {
    /// What a `SELECT COUNT(*) …` answers, read beside the storage.
    async fn count(&self, query: &str) -> i64 {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.url)
            .await
            .expect("connect beside the storage");
        sqlx::query_scalar(sqlx::AssertSqlSafe(query.to_string()))
            .fetch_one(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"))
    }
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::$name(super::sqlite().await).await })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() { super::$name(super::postgres().await).await })*
        }
    };
}

on_both_backends!(
    a_commit_stores_the_aggregate_and_its_event,
    writes_must_follow_the_version_they_read,
    staged_writes_hold_the_aggregate_until_the_saga_ends,
    a_failed_saga_leaves_no_trace,
    a_message_is_consumed_once_and_a_duplicate_changes_nothing,
    saga_rows_change_only_at_the_revision_they_were_read,
    queued_messages_are_deferred_dead_lettered_and_redriven,
    find_narrows_in_sql_and_overlays_the_saga,
    one_failing_transaction_does_not_fail_the_others_in_its_batch,
    transactions_sent_at_once_commit_together_with_all_their_rows,
    writes_for_a_saga_that_ended_are_dropped,
    hosts_take_over_the_sagas_of_hosts_that_went_silent,
    queue_entries_handed_on_are_removed,
);

fn uuid() -> String {
    Uuid::new_v4().to_string()
}

fn write(uuid: &str, action: Action, version: u64, data: serde_json::Value) -> Write {
    let now = now_ms();
    Write {
        service: "exam".into(),
        aggregate: "Exam".into(),
        uuid: uuid.into(),
        action,
        version,
        diff: data.to_string(),
        data: data.to_string(),
        created_at: now,
        updated_at: now,
        staged_under: None,
    }
}

fn staged(mut write: Write, saga: &str) -> Write {
    write.staged_under = Some(saga.parse().expect("a saga id"));
    write
}

fn writes(writes: Vec<Write>) -> Transaction {
    Transaction {
        writes,
        ..Transaction::default()
    }
}

fn saga_row(id: &str, status: &str, revision: i64, timer_at: Option<i64>) -> SagaRow {
    SagaRow {
        id: id.into(),
        service: "exam".into(),
        name: "GET_USER_ATTEMPTS".into(),
        version: "digest-1".into(),
        status: Status::parse(status).expect("a saga status"),
        // Storage keeps a record as the bytes it is given: a NUL and an invalid UTF-8 byte
        // must come back as they went.
        record: [format!("revision {revision}").as_bytes(), &[0, 0xff]].concat(),
        created_at: now_ms(),
        updated_at: now_ms(),
        revision,
        timer_at,
        owner: Some("host-a".into()),
    }
}

async fn data_of(storage: &Storage, uuid: &str, saga: Option<&str>) -> Option<serde_json::Value> {
    storage
        .get(
            "exam",
            "Exam",
            uuid,
            saga.map(|s| s.parse().expect("a saga id")),
        )
        .await
        .expect("get")
        .filter(|s| !s.deleted)
        .map(|s| s.record.data)
}

async fn a_commit_stores_the_aggregate_and_its_event(db: Backend) {
    let id = uuid();
    let data = serde_json::json!({"attempt": 1, "user_uuid": "u1"});
    db.storage
        .commit(writes(vec![write(&id, Action::Create, 1, data.clone())]))
        .await
        .expect("commit");
    let stored = db
        .storage
        .get("exam", "Exam", &id, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.record.data, data);
    assert_eq!(stored.record.version, 1);
    assert!(!stored.deleted);
    // Another service's namespace does not see it, nor does another aggregate type's.
    assert!(
        db.storage
            .get("attempt", "Exam", &id, None)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        db.storage
            .get("exam", "Attempt", &id, None)
            .await
            .unwrap()
            .is_none()
    );

    let updated = serde_json::json!({"attempt": 2, "user_uuid": "u1"});
    db.storage
        .commit(writes(vec![write(&id, Action::Update, 2, updated.clone())]))
        .await
        .expect("update");
    db.storage
        .commit(writes(vec![write(&id, Action::Delete, 3, updated)]))
        .await
        .expect("delete");
    let deleted = db
        .storage
        .get("exam", "Exam", &id, None)
        .await
        .unwrap()
        .unwrap();
    assert!(
        deleted.deleted,
        "a deleted aggregate keeps its row, flagged"
    );
    assert_eq!(
        db.count(&format!("SELECT COUNT(*) FROM events WHERE uuid = '{id}'"))
            .await,
        3,
        "one event per version"
    );
}

async fn writes_must_follow_the_version_they_read(db: Backend) {
    let id = uuid();
    let data = serde_json::json!({"n": 1});
    db.storage
        .commit(writes(vec![write(&id, Action::Create, 1, data.clone())]))
        .await
        .unwrap();
    let again = db
        .storage
        .commit(writes(vec![write(&id, Action::Create, 1, data.clone())]))
        .await;
    assert!(
        matches!(&again, Err(StorageError::Conflict { reason, .. }) if reason.contains("already exists")),
        "{again:?}"
    );
    let stale = db
        .storage
        .commit(writes(vec![write(&id, Action::Update, 3, data.clone())]))
        .await;
    assert!(
        matches!(&stale, Err(StorageError::Conflict { reason, .. }) if reason.contains("version conflict")),
        "{stale:?}"
    );
    assert_eq!(
        db.storage
            .get("exam", "Exam", &id, None)
            .await
            .unwrap()
            .unwrap()
            .record
            .version,
        1,
        "refused writes change nothing"
    );
}

async fn staged_writes_hold_the_aggregate_until_the_saga_ends(db: Backend) {
    let (saga, id) = (uuid(), uuid());
    let data = serde_json::json!({"n": 1});
    db.storage
        .commit(Transaction {
            writes: vec![staged(write(&id, Action::Create, 1, data.clone()), &saga)],
            saga: Some(saga_row(&saga, "running", 0, None)),
            ..Transaction::default()
        })
        .await
        .expect("stage");
    assert_eq!(
        data_of(&db.storage, &id, None).await,
        None,
        "others do not see it"
    );
    assert_eq!(
        data_of(&db.storage, &id, Some(&saga)).await,
        Some(data.clone())
    );

    // Another saga, or a direct write, is kept out and told who holds it.
    let other = uuid();
    let held = db
        .storage
        .commit(writes(vec![staged(
            write(&id, Action::Create, 1, data.clone()),
            &other,
        )]))
        .await;
    assert!(
        matches!(&held, Err(StorageError::Conflict { holder: Some(h), .. }) if *h == saga),
        "{held:?}"
    );
    let direct = db
        .storage
        .commit(writes(vec![write(&id, Action::Create, 1, data.clone())]))
        .await;
    assert!(
        matches!(&direct, Err(StorageError::Conflict { .. })),
        "{direct:?}"
    );

    // The saga writes again on its own staged version, then finishes: promoted.
    let changed = serde_json::json!({"n": 2});
    db.storage
        .commit(Transaction {
            writes: vec![staged(
                write(&id, Action::Update, 2, changed.clone()),
                &saga,
            )],
            saga: Some(saga_row(&saga, "finished", 1, None)),
            resolve: Some(Resolve::Promote(saga.parse().unwrap())),
            ..Transaction::default()
        })
        .await
        .expect("finish");
    assert_eq!(data_of(&db.storage, &id, None).await, Some(changed));
    assert_eq!(db.count("SELECT COUNT(*) FROM staged_snapshots").await, 0);
    assert_eq!(db.count("SELECT COUNT(*) FROM staged_events").await, 0);
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM events WHERE uuid = '{id}' AND saga = '{saga}'"
        ))
        .await,
        2,
        "the saga's events are promoted, marked with the saga"
    );
}

async fn a_failed_saga_leaves_no_trace(db: Backend) {
    let (saga, id) = (uuid(), uuid());
    let message = NewMessage {
        id: uuid(),
        consumer: "attempt".into(),
        body: "{}".into(),
        staged_under: Some(saga.parse().unwrap()),
    };
    db.storage
        .commit(Transaction {
            writes: vec![staged(
                write(&id, Action::Create, 1, serde_json::json!({})),
                &saga,
            )],
            messages: vec![message],
            saga: Some(saga_row(&saga, "running", 0, None)),
            ..Transaction::default()
        })
        .await
        .unwrap();
    assert_eq!(db.count("SELECT COUNT(*) FROM staged_messages").await, 1);
    let committed = db
        .storage
        .commit(Transaction {
            saga: Some(saga_row(&saga, "errored", 1, None)),
            resolve: Some(Resolve::Discard(saga.parse().unwrap())),
            ..Transaction::default()
        })
        .await
        .unwrap();
    assert!(
        committed.queued.is_empty(),
        "a failed saga's messages are never sent"
    );
    assert_eq!(data_of(&db.storage, &id, Some(&saga)).await, None);
    for table in [
        "staged_snapshots",
        "staged_events",
        "staged_messages",
        "queue",
        "snapshots",
    ] {
        assert_eq!(
            db.count(&format!("SELECT COUNT(*) FROM {table}")).await,
            0,
            "{table}"
        );
    }
}

async fn a_message_is_consumed_once_and_a_duplicate_changes_nothing(db: Backend) {
    let reply = NewMessage {
        id: uuid(),
        consumer: "exam".into(),
        body: r#"{"status":200}"#.into(),
        staged_under: None,
    };
    let consumed = Consumed {
        consumer: "attempt".into(),
        message_id: uuid(),
        reply: Some(reply.clone()),
    };
    let handling = |id: &str| Transaction {
        writes: vec![write(id, Action::Create, 1, serde_json::json!({}))],
        consumed: vec![consumed.clone()],
        ..Transaction::default()
    };
    db.storage
        .commit(handling(&uuid()))
        .await
        .expect("first delivery");
    let second = uuid();
    let again = db.storage.commit(handling(&second)).await;
    assert!(
        matches!(&again, Err(StorageError::Duplicate(id)) if *id == consumed.message_id),
        "{again:?}"
    );
    assert_eq!(
        data_of(&db.storage, &second, None).await,
        None,
        "the duplicate wrote nothing"
    );
    // The first handling's reply is kept, to answer the copy again.
    assert_eq!(
        db.storage
            .stored_reply("attempt", &consumed.message_id)
            .await
            .unwrap(),
        Some(reply)
    );
    assert_eq!(
        db.storage.stored_reply("attempt", &uuid()).await.unwrap(),
        None
    );
    // Forgetting old records is bounded by age.
    assert_eq!(
        db.storage.prune_consumed(now_ms() - 60_000).await.unwrap(),
        0
    );
    assert_eq!(db.storage.prune_consumed(now_ms() + 1).await.unwrap(), 1);
}

async fn saga_rows_change_only_at_the_revision_they_were_read(db: Backend) {
    let id = uuid();
    let due = now_ms() + 5_000;
    db.storage
        .commit(Transaction {
            saga: Some(saga_row(&id, "running", 0, Some(due))),
            ..Transaction::default()
        })
        .await
        .unwrap();
    let twice = db
        .storage
        .commit(Transaction {
            saga: Some(saga_row(&id, "running", 0, None)),
            ..Transaction::default()
        })
        .await;
    assert!(
        matches!(&twice, Err(StorageError::SagaChanged(_))),
        "{twice:?}"
    );
    let stored = db.storage.load_saga(&id).await.unwrap().expect("stored");
    assert_eq!((stored.revision, stored.timer_at), (1, Some(due)));
    // Owned by host-a, which never said it is alive: any host takes it over.
    assert_eq!(
        db.storage
            .claim_orphaned_sagas("host-b", now_ms() - 5_000)
            .await
            .unwrap(),
        vec![(id.clone(), due)]
    );
    assert_eq!(
        db.storage
            .load_saga(&id)
            .await
            .unwrap()
            .unwrap()
            .owner
            .as_deref(),
        Some("host-b")
    );
    assert_eq!(
        db.storage.running_versions().await.unwrap(),
        vec![("exam".to_string(), "digest-1".to_string(), 1)]
    );

    db.storage
        .commit(Transaction {
            saga: Some(saga_row(&id, "finished", 1, None)),
            ..Transaction::default()
        })
        .await
        .expect("at the revision it read");
    let stale = db
        .storage
        .commit(Transaction {
            saga: Some(saga_row(&id, "errored", 1, None)),
            ..Transaction::default()
        })
        .await;
    assert!(
        matches!(&stale, Err(StorageError::SagaChanged(_))),
        "{stale:?}"
    );
    let of_status = |status| SagaFilter {
        status: Some(status),
        ..SagaFilter::default()
    };
    let listed = db
        .storage
        .list_sagas(&of_status(Status::Finished), None, 10)
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        vec![id.as_str()]
    );
    assert!(
        db.storage
            .list_sagas(&of_status(Status::Errored), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let prefix = SagaFilter {
        id_prefix: Some(id[..6].to_string()),
        service: Some("exam".into()),
        ..SagaFilter::default()
    };
    let counted = db.storage.count_sagas(&prefix).await.unwrap();
    assert_eq!(
        counted.iter().map(|c| c.count).sum::<i64>(),
        1,
        "{counted:?}"
    );
    let after = SagaKey {
        created_at: listed[0].created_at,
        id: id.clone(),
    };
    assert!(
        db.storage
            .list_sagas(&SagaFilter::default(), Some(&after), 10)
            .await
            .unwrap()
            .iter()
            .all(|s| s.id != id),
        "a page starts after its cursor"
    );
    assert!(
        db.storage
            .claim_orphaned_sagas("host-c", i64::MAX)
            .await
            .unwrap()
            .is_empty(),
        "an ended saga has no timer to take over"
    );
    assert!(db.storage.running_versions().await.unwrap().is_empty());
}

async fn queued_messages_are_deferred_dead_lettered_and_redriven(db: Backend) {
    let message = NewMessage {
        id: uuid(),
        consumer: "attempt".into(),
        body: r#"{"payload":"x"}"#.into(),
        staged_under: None,
    };
    let committed = db
        .storage
        .commit(Transaction {
            messages: vec![message.clone()],
            ..Transaction::default()
        })
        .await
        .unwrap();
    let [queued] = committed.queued.as_slice() else {
        panic!("one message queued: {:?}", committed.queued);
    };
    assert_eq!(
        (queued.id.as_str(), queued.attempts),
        (message.id.as_str(), 0)
    );
    let later = now_ms() + 60_000;
    db.storage
        .defer_message(queued.seq, 2, later)
        .await
        .unwrap();
    let waiting = db.storage.queued_messages().await.unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!((waiting[0].attempts, waiting[0].available_at), (2, later));

    db.storage
        .commit(Transaction {
            dead_letter: Some(DeadLettering {
                queued: Some(queued.seq),
                message_id: queued.id.clone(),
                consumer: queued.consumer.clone(),
                body: queued.body.clone(),
                attempts: 3,
                error: "it kept failing".into(),
            }),
            ..Transaction::default()
        })
        .await
        .unwrap();
    assert!(db.storage.queued_messages().await.unwrap().is_empty());
    let dead = db.storage.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (
            dead[0].message_id.as_str(),
            dead[0].body.as_str(),
            dead[0].attempts,
            dead[0].error.as_str()
        ),
        (
            message.id.as_str(),
            message.body.as_str(),
            3,
            "it kept failing"
        )
    );

    let redriven = db
        .storage
        .commit(Transaction {
            redrive: Some(dead[0].seq),
            ..Transaction::default()
        })
        .await
        .unwrap();
    assert_eq!(redriven.queued.len(), 1);
    assert_eq!(redriven.queued[0].id, message.id);
    assert!(db.storage.dead_letters(10).await.unwrap().is_empty());
    db.storage
        .commit(Transaction {
            ack: Some(redriven.queued[0].seq),
            ..Transaction::default()
        })
        .await
        .unwrap();
    assert!(
        db.storage.queued_messages().await.unwrap().is_empty(),
        "acknowledged"
    );
}

async fn find_narrows_in_sql_and_overlays_the_saga(db: Backend) {
    let field = FieldPath::parse("user_uuid").unwrap();
    db.storage
        .ensure_index("exam", "Exam", &field)
        .await
        .expect("an index");
    db.storage
        .ensure_index("exam", "Exam", &field)
        .await
        .expect("idempotent");
    let (mine, theirs, numeric) = (uuid(), uuid(), uuid());
    db.storage
        .commit(writes(vec![
            write(
                &mine,
                Action::Create,
                1,
                serde_json::json!({"user_uuid": "u1", "n": 1}),
            ),
            write(
                &theirs,
                Action::Create,
                1,
                serde_json::json!({"user_uuid": "u2", "n": 2}),
            ),
            // Equal as text, but a number: not a match for the string "7".
            write(
                &numeric,
                Action::Create,
                1,
                serde_json::json!({"user_uuid": 7}),
            ),
        ]))
        .await
        .unwrap();
    let condition = |value: &str| {
        Condition::parse(&[Node::Compare {
            field: "user_uuid".into(),
            op: CompareOp::Equal,
            value: serde_json::json!(value).to_string(),
        }])
        .unwrap()
    };
    let u1 = condition("u1").prefilter();
    assert!(u1.exact);
    let found = db
        .storage
        .find("exam", "Exam", &u1, Some(10), None)
        .await
        .unwrap();
    assert_eq!(
        found
            .committed
            .iter()
            .map(|r| r.uuid.as_str())
            .collect::<Vec<_>>(),
        vec![mine.as_str()]
    );
    let seven = condition("7").prefilter();
    let found = db
        .storage
        .find("exam", "Exam", &seven, None, None)
        .await
        .unwrap();
    assert!(found.committed.is_empty(), "{:?}", found.committed);

    // A saga sees its staged aggregates next to the committed candidates.
    let saga = uuid();
    let staged_id = uuid();
    db.storage
        .commit(Transaction {
            writes: vec![staged(
                write(
                    &staged_id,
                    Action::Create,
                    1,
                    serde_json::json!({"user_uuid": "u1"}),
                ),
                &saga,
            )],
            saga: Some(saga_row(&saga, "running", 0, None)),
            ..Transaction::default()
        })
        .await
        .unwrap();
    let found = db
        .storage
        .find("exam", "Exam", &u1, None, Some(saga.parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(found.committed.len(), 1);
    assert_eq!(
        found
            .staged
            .iter()
            .map(|s| s.record.uuid.as_str())
            .collect::<Vec<_>>(),
        vec![staged_id.as_str()]
    );
    let outside = db
        .storage
        .find("exam", "Exam", &u1, None, None)
        .await
        .unwrap();
    assert!(
        outside.staged.is_empty(),
        "others never see a saga's staged writes"
    );
}

async fn one_failing_transaction_does_not_fail_the_others_in_its_batch(db: Backend) {
    let taken = uuid();
    db.storage
        .commit(writes(vec![write(
            &taken,
            Action::Create,
            1,
            serde_json::json!({}),
        )]))
        .await
        .unwrap();
    // Sent at once, they share database commits; the one that conflicts fails alone.
    let commits: Vec<_> = (0..40)
        .map(|n| {
            let storage = db.storage.clone();
            let id = if n == 17 { taken.clone() } else { uuid() };
            tokio::spawn(async move {
                let outcome = storage
                    .commit(writes(vec![write(
                        &id,
                        Action::Create,
                        1,
                        serde_json::json!({"n": n}),
                    )]))
                    .await;
                (n, outcome.is_ok())
            })
        })
        .collect();
    for commit in commits {
        let (n, ok) = commit.await.unwrap();
        assert_eq!(ok, n != 17, "transaction {n}");
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM snapshots").await, 40);
}

/// Group commits on PostgreSQL, counted by how they were applied (the metric).
fn commits_together() -> u64 {
    saga_host::telemetry::metrics::render()
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(r#"saga_host_storage_commits_total{way="together"} "#))
        .map_or(0, |count| count.parse().expect("a count"))
}

async fn transactions_sent_at_once_commit_together_with_all_their_rows(db: Backend) {
    saga_host::telemetry::metrics::install().expect("the metrics recorder");
    // Ten aggregates and ten sagas stored first: the batch updates five, deletes five, and
    // moves every saga on; thirty more transactions create an aggregate and a saga each.
    let stored: Vec<String> = (0..10).map(|_| uuid()).collect();
    let sagas: Vec<String> = (0..10).map(|_| uuid()).collect();
    for (aggregate, saga) in stored.iter().zip(&sagas) {
        db.storage
            .commit(Transaction {
                writes: vec![write(
                    aggregate,
                    Action::Create,
                    1,
                    serde_json::json!({"n": 0}),
                )],
                saga: Some(saga_row(saga, "running", 0, Some(now_ms() + 60_000))),
                ..Transaction::default()
            })
            .await
            .unwrap();
    }
    let before = commits_together();
    let mut transactions: Vec<Transaction> = stored
        .iter()
        .zip(&sagas)
        .enumerate()
        .map(|(n, (aggregate, saga))| {
            let action = if n < 5 {
                Action::Update
            } else {
                Action::Delete
            };
            Transaction {
                writes: vec![write(aggregate, action, 2, serde_json::json!({"n": 1}))],
                saga: Some(saga_row(saga, "finished", 1, None)),
                ..Transaction::default()
            }
        })
        .collect();
    transactions.extend((0..30).map(|n| Transaction {
        writes: vec![write(
            &uuid(),
            Action::Create,
            1,
            serde_json::json!({"new": n}),
        )],
        saga: Some(saga_row(&uuid(), "finished", 0, None)),
        ..Transaction::default()
    }));
    let commits: Vec<_> = transactions
        .into_iter()
        .map(|transaction| {
            let storage = db.storage.clone();
            tokio::spawn(async move { storage.commit(transaction).await })
        })
        .collect();
    for commit in commits {
        commit.await.unwrap().expect("committed");
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM snapshots").await, 40);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM snapshots WHERE version = 2 AND deleted = 0")
            .await,
        5
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM snapshots WHERE version = 2 AND deleted = 1")
            .await,
        5
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM events").await,
        50,
        "one event per write"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM events WHERE action = 'delete'")
            .await,
        5
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM sagas WHERE status = 'finished'")
            .await,
        40
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM sagas WHERE revision = 2 AND timer_at IS NULL")
            .await,
        10,
        "each stored saga moved on once, its timer cleared"
    );
    for saga in &sagas {
        let row = db.storage.load_saga(saga).await.unwrap().expect("stored");
        assert_eq!(
            (row.revision, row.record),
            (2, saga_row(saga, "finished", 1, None).record),
            "the record the saga's second transaction stored"
        );
    }
    let together = commits_together() - before;
    // SQLite applies one by one (its statements are calls in the process, not round trips).
    if db._postgres.is_some() {
        assert!(together >= 1, "no group commit was applied together");
    }
}

async fn writes_for_a_saga_that_ended_are_dropped(db: Backend) {
    let saga = uuid();
    db.storage
        .commit(Transaction {
            saga: Some(saga_row(&saga, "finished", 0, None)),
            ..Transaction::default()
        })
        .await
        .unwrap();
    // A participant answering after the saga ended: its staged work has nowhere to go.
    db.storage
        .commit(writes(vec![staged(
            write(&uuid(), Action::Create, 1, serde_json::json!({})),
            &saga,
        )]))
        .await
        .expect("accepted, and dropped");
    assert_eq!(db.count("SELECT COUNT(*) FROM staged_snapshots").await, 0);
}

async fn hosts_take_over_the_sagas_of_hosts_that_went_silent(db: Backend) {
    let consumes = vec![Consumes {
        service: "attempt".into(),
        kind: TopicKind::Command,
        topic: "GetUserAttempts".into(),
    }];
    db.storage
        .heartbeat("host-a", Some(&consumes))
        .await
        .unwrap();
    db.storage.heartbeat("host-b", Some(&[])).await.unwrap();
    let recently = now_ms() - 5_000;
    assert_eq!(
        db.storage.cluster_consumes(recently).await.unwrap(),
        consumes
    );
    let saga = uuid();
    db.storage
        .commit(Transaction {
            saga: Some(saga_row(&saga, "running", 0, Some(now_ms()))),
            ..Transaction::default()
        })
        .await
        .unwrap();
    assert!(
        db.storage
            .claim_orphaned_sagas("host-b", recently)
            .await
            .unwrap()
            .is_empty(),
        "host-a is alive: its saga stays its own"
    );
    // Later, host-a has been silent for a whole lease; host-b takes its saga over.
    let later = now_ms() + 1;
    assert!(db.storage.cluster_consumes(later).await.unwrap().is_empty());
    let taken = db
        .storage
        .claim_orphaned_sagas("host-b", later)
        .await
        .unwrap();
    assert_eq!(
        taken.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
        vec![saga.as_str()]
    );
    db.storage.forget_hosts(later).await.unwrap();
    assert_eq!(db.count("SELECT COUNT(*) FROM hosts").await, 0);
    assert_eq!(db.count("SELECT COUNT(*) FROM host_topics").await, 0);
}

async fn queue_entries_handed_on_are_removed(db: Backend) {
    let messages: Vec<NewMessage> = (0..3)
        .map(|_| NewMessage {
            id: uuid(),
            consumer: "attempt".into(),
            body: "{}".into(),
            staged_under: None,
        })
        .collect();
    let committed = db
        .storage
        .commit(Transaction {
            messages,
            ..Transaction::default()
        })
        .await
        .unwrap();
    assert!(
        db.storage
            .queued_before(now_ms() - 60_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let left = db.storage.queued_before(now_ms() + 1, 2).await.unwrap();
    assert_eq!(left.len(), 2, "at most the limit, oldest first");
    assert_eq!(left[0].seq, committed.queued[0].seq);
    db.storage
        .remove_queued(&[committed.queued[0].seq, committed.queued[2].seq])
        .await
        .unwrap();
    let rest = db.storage.queued_messages().await.unwrap();
    assert_eq!(
        rest.iter().map(|q| q.seq).collect::<Vec<_>>(),
        vec![committed.queued[1].seq]
    );
}

/// The text columns of PostgreSQL's keys and indexes, as `table.index.column` under the
/// collation each is compared with.
const INDEXED_TEXT_COLUMNS: &str = "SELECT t.relname || '.' || i.indexrelid::regclass || '.' || a.attname, \
     coalesce(c.collname, 'default') \
     FROM pg_index i \
     JOIN pg_class t ON t.oid = i.indrelid \
     JOIN pg_namespace n ON n.oid = t.relnamespace AND n.nspname = current_schema() \
     CROSS JOIN LATERAL unnest(i.indkey::int2[], i.indcollation::oid[]) AS k(attnum, coll) \
     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
     LEFT JOIN pg_collation c ON c.oid = k.coll \
     WHERE a.atttypid = 'text'::regtype";

/// On PostgreSQL every text column of a key or an index compares as bytes (`COLLATE "C"`), as
/// SQLite's do: under the database's default collation every comparison in an index is a
/// `strcoll`. A new table or index must keep to it (see the migration
/// `20261130000000_keys_compare_as_bytes.sql`).
#[tokio::test]
async fn postgres_keys_compare_as_bytes() {
    use sqlx::Connection;
    let db = postgres().await;
    let mut conn = sqlx::PgConnection::connect(&db.url)
        .await
        .expect("connect beside the storage");
    let columns: Vec<(String, String)> = sqlx::query_as(INDEXED_TEXT_COLUMNS)
        .fetch_all(&mut conn)
        .await
        .expect("read the catalog");
    let (bytes, other): (Vec<_>, Vec<_>) =
        columns.iter().partition(|(_, collation)| collation == "C");
    assert!(
        other.is_empty(),
        "indexed text columns under another collation than \"C\": {other:?}"
    );
    assert!(
        bytes
            .iter()
            .any(|(column, _)| column == "snapshots.snapshots_pkey.uuid")
            && bytes
                .iter()
                .any(|(column, _)| column == "sagas.sagas_pkey.id"),
        "the check saw the keys: {bytes:?}"
    );
}

/// SQLite's checkpointer copies each commit into the database file soon after it, beside the
/// writer, rather than in the commit that fills the WAL: a reader of the file alone
/// (`immutable=1` makes SQLite ignore the WAL) sees the commit within a moment.
#[tokio::test]
async fn sqlite_commits_reach_the_database_file_beside_the_writer() {
    use rusqlite::OpenFlags;
    let db = sqlite().await;
    let path = db.url.trim_start_matches("sqlite://");
    let path = path.split('?').next().expect("a file path");
    let events_in_file = |id: &str| -> i64 {
        // The checkpointer may be writing the page this reads: an error is "not there yet".
        rusqlite::Connection::open_with_flags(
            format!("file:{path}?immutable=1"),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )
        .and_then(|file| {
            file.query_row("SELECT COUNT(*) FROM events WHERE uuid = ?1", [id], |row| {
                row.get(0)
            })
        })
        .unwrap_or(0)
    };
    let id = uuid();
    db.storage
        .commit(writes(vec![write(
            &id,
            Action::Create,
            1,
            serde_json::json!({}),
        )]))
        .await
        .expect("commit");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while events_in_file(&id) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the commit is still only in the WAL after 5 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The migration that moves each saga's history rows (`saga_history`, a row per stored
/// revision) into its record: a database written before it keeps every saga, state and history
/// in order, and the host reads them.
async fn history_rows_move_into_the_saga_record(url: &str, dialect: &str) {
    use sqlx::Connection;
    use sqlx::migrate::Migrator;
    sqlx::any::install_default_drivers();
    let folder = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(dialect);
    let mut before = Migrator::new(folder).await.expect("read the migrations");
    let all = before.migrations.len();
    before.migrations = before
        .migrations
        .iter()
        .filter(|m| m.version < 20261201000000)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    assert!(before.migrations.len() < all, "the migration is among them");
    let mut conn = sqlx::AnyConnection::connect(url).await.expect("connect");
    before
        .run(&mut conn)
        .await
        .expect("the schema before the migration");
    let id = uuid();
    sqlx::query(
        "INSERT INTO sagas (id, service, name, version, status, state, created_at, updated_at, \
         revision, timer_at, owner) VALUES ($1, 'exam', 'GET_USER_ATTEMPTS', 'digest-1', \
         'finished', $2, 1, 2, 2, NULL, NULL)",
    )
    .bind(&id)
    .bind(r#"{"digest":"digest-1","context":{"user":"ü"},"frames":[],"steps":[]}"#)
    .execute(&mut conn)
    .await
    .expect("a saga of the old schema");
    // Inserted out of order: the revision orders them.
    for (revision, what) in [(2, "second"), (1, "first")] {
        sqlx::query("INSERT INTO saga_history (saga, revision, entries) VALUES ($1, $2, $3)")
            .bind(&id)
            .bind(revision as i64)
            .bind(format!(
                r#"[{{"at":{revision},"event":"ignored","what":"{what}","why":""}}]"#
            ))
            .execute(&mut conn)
            .await
            .expect("its history rows");
    }
    conn.close().await.expect("close");

    let storage = Storage::open(url).await.expect("open and migrate");
    let row = storage
        .load_saga(&id)
        .await
        .unwrap()
        .expect("the saga is kept");
    let stored = saga_host::saga::record::Stored::from_row(&row).expect("the host reads it");
    assert_eq!(stored.exec.context.as_str(), r#"{"user":"ü"}"#);
    assert_eq!(stored.exec.digest.as_str(), "digest-1");
    let said: Vec<String> = stored
        .entries()
        .expect("its history reads")
        .iter()
        .map(|entry| serde_json::to_value(entry).unwrap()["what"].to_string())
        .collect();
    assert_eq!(said, [r#""first""#, r#""second""#]);
}

#[tokio::test]
async fn sqlite_history_rows_move_into_the_saga_record() {
    let dir = TempDir::new("history-migration");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("db.sqlite").display()
    );
    history_rows_move_into_the_saga_record(&url, "sqlite").await;
}

#[tokio::test]
async fn postgres_history_rows_move_into_the_saga_record() {
    let database = PgDatabase::create("history_migration").await;
    history_rows_move_into_the_saga_record(&database.url, "postgres").await;
}
