//! Idempotency keys: a claim taken (or a stale one taken over) before a keyed request runs,
//! its answer stored with the request's effects, the key given up when the run failed.

use sqlx::Row;
use sqlx::any::{Any, AnyArguments};
use sqlx::query::Query;

use super::exec::{Exec, args};

use super::{Result, Storage};
use crate::storage::{KeyRecord, KeyUse, Keys, RequestKey, StorageError};

impl Keys for Storage {
    async fn request_key(&self, key: &RequestKey) -> Result<Option<KeyRecord>> {
        let row = bind_key(
            sqlx::query(
                "SELECT request_hash, claimed_at, status, response FROM idempotency \
                 WHERE service = $1 AND route = $2 AND idempotency_key = $3",
            ),
            key,
        )
        .fetch_optional(&self.inner.reads)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let status: Option<i32> = row.try_get("status")?;
        let response: Option<String> = row.try_get("response")?;
        Ok(Some(KeyRecord {
            request_hash: row.try_get("request_hash")?,
            claimed_at: row.try_get("claimed_at")?,
            answer: status
                .zip(response)
                .map(|(status, body)| (status as u16, body)),
        }))
    }

    async fn prune_keys(&self, before: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM idempotency WHERE claimed_at < $1")
            .bind(before)
            .execute(&self.inner.reads)
            .await?;
        Ok(done.rows_affected())
    }
}

/// Binds the key's service, route and key, in that order.
fn bind_key<'q>(
    query: Query<'q, Any, AnyArguments>,
    key: &'q RequestKey,
) -> Query<'q, Any, AnyArguments> {
    query.bind(&key.service).bind(&key.route).bind(&key.key)
}

/// Applies a transaction's use of a key; `KeyHeld` when the key is not this run's to use.
pub(super) async fn apply(conn: &mut impl Exec, used: &KeyUse, now: i64) -> Result<()> {
    // Every statement binds the key first: its service, route and key are $1, $2, $3.
    let changed = match used {
        KeyUse::Claim {
            key,
            request_hash,
            claim,
            stale_before,
        } => {
            conn.execute(
                "INSERT INTO idempotency \
                 (service, route, idempotency_key, request_hash, claimed_by, claimed_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (service, route, idempotency_key) DO UPDATE \
                 SET claimed_by = excluded.claimed_by, claimed_at = excluded.claimed_at \
                 WHERE idempotency.status IS NULL AND idempotency.claimed_at < $7 \
                 AND idempotency.request_hash = excluded.request_hash",
                args![
                    &key.service,
                    &key.route,
                    &key.key,
                    request_hash,
                    claim,
                    now,
                    *stale_before,
                ],
            )
            .await?
        }
        KeyUse::Answer {
            key,
            claim,
            status,
            body,
        } => {
            conn.execute(
                "UPDATE idempotency SET status = $4, response = $5 \
                 WHERE service = $1 AND route = $2 AND idempotency_key = $3 AND claimed_by = $6",
                args![
                    &key.service,
                    &key.route,
                    &key.key,
                    i64::from(*status),
                    body,
                    claim,
                ],
            )
            .await?
        }
        KeyUse::Release { key, claim } => {
            conn.execute(
                "DELETE FROM idempotency WHERE service = $1 AND route = $2 \
                 AND idempotency_key = $3 AND claimed_by = $4 AND status IS NULL",
                args![&key.service, &key.route, &key.key, claim],
            )
            .await?
        }
    };
    if changed == 0 && !matches!(used, KeyUse::Release { .. }) {
        return Err(StorageError::KeyHeld(used.key().key.clone()));
    }
    Ok(())
}
