//! The in-process broker's queue, the dead letters, and the record of consumed messages.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::{Result, Storage};
use crate::storage::{Backlog, DeadLetter, NewMessage, Queue, QueuedMessage};

impl Queue for Storage {
    async fn queued_messages(&self) -> Result<Vec<QueuedMessage>> {
        let rows = sqlx::query(
            "SELECT seq, id, consumer, body, attempts, available_at FROM queue ORDER BY seq",
        )
        .fetch_all(&self.inner.reads)
        .await?;
        rows.iter().map(queued_from_row).collect()
    }

    async fn queued_before(&self, before: i64, limit: u32) -> Result<Vec<QueuedMessage>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT seq, id, consumer, body, attempts, available_at FROM queue \
             WHERE available_at < $1 ORDER BY seq LIMIT {limit}"
        )))
        .bind(before)
        .fetch_all(&self.inner.reads)
        .await?;
        rows.iter().map(queued_from_row).collect()
    }

    async fn remove_queued(&self, seqs: &[i64]) -> Result<()> {
        for chunk in seqs.chunks(500) {
            let list: Vec<String> = chunk.iter().map(i64::to_string).collect();
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM queue WHERE seq IN ({})",
                list.join(",")
            )))
            .execute(&self.inner.reads)
            .await?;
        }
        Ok(())
    }

    async fn defer_message(&self, seq: i64, attempts: u32, available_at: i64) -> Result<()> {
        sqlx::query("UPDATE queue SET attempts = $1, available_at = $2 WHERE seq = $3")
            .bind(attempts as i64)
            .bind(available_at)
            .bind(seq)
            .execute(&self.inner.reads)
            .await?;
        Ok(())
    }

    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT seq, message_id, consumer, body, attempts, error, failed_at FROM dead_letters \
             ORDER BY seq LIMIT {limit}"
        )))
        .fetch_all(&self.inner.reads)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DeadLetter {
                    seq: row.try_get("seq")?,
                    message_id: row.try_get("message_id")?,
                    consumer: row.try_get("consumer")?,
                    body: row.try_get("body")?,
                    attempts: row.try_get::<i64, _>("attempts")? as u32,
                    error: row.try_get("error")?,
                    failed_at: row.try_get("failed_at")?,
                })
            })
            .collect()
    }

    async fn stored_reply(&self, consumer: &str, message_id: &str) -> Result<Option<NewMessage>> {
        let row = sqlx::query(
            "SELECT reply_id, reply_consumer, reply_body FROM consumed \
             WHERE consumer = $1 AND message_id = $2 AND reply_id IS NOT NULL",
        )
        .bind(consumer)
        .bind(message_id)
        .fetch_optional(&self.inner.reads)
        .await?;
        row.map(|row| {
            Ok(NewMessage {
                id: row.try_get("reply_id")?,
                consumer: row.try_get("reply_consumer")?,
                body: row.try_get("reply_body")?,
                staged_under: None,
            })
        })
        .transpose()
    }

    async fn backlog(&self) -> Result<Backlog> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM queue) AS queued, \
                    (SELECT MIN(available_at) FROM queue) AS oldest_at, \
                    (SELECT COUNT(*) FROM dead_letters) AS dead_letters",
        )
        .fetch_one(&self.inner.reads)
        .await?;
        Ok(Backlog {
            queued: row.try_get::<i64, _>("queued")? as u64,
            oldest_at: row.try_get("oldest_at")?,
            dead_letters: row.try_get::<i64, _>("dead_letters")? as u64,
        })
    }

    async fn prune_consumed(&self, before: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM consumed WHERE at < $1")
            .bind(before)
            .execute(&self.inner.reads)
            .await?;
        Ok(done.rows_affected())
    }
}

fn queued_from_row(row: &AnyRow) -> Result<QueuedMessage> {
    Ok(QueuedMessage {
        seq: row.try_get("seq")?,
        id: row.try_get("id")?,
        consumer: row.try_get("consumer")?,
        body: row.try_get("body")?,
        attempts: row.try_get::<i64, _>("attempts")? as u32,
        available_at: row.try_get("available_at")?,
    })
}
