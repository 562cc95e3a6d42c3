//! Cluster-wide deploys: versions' bytes, the cluster's current versions, what each host runs.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Result, Storage};
use crate::storage::{ClusterComponent, ClusterDeploy, Deploys, HostComponent, now_ms};

const STORE_VERSION: &str = "INSERT INTO component_versions (digest, service, bytes, stored_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (digest) DO NOTHING";

impl Deploys for Storage {
    async fn store_version(&self, service: &str, digest: &str, bytes: &[u8]) -> Result<()> {
        sqlx::query(STORE_VERSION)
            .bind(digest)
            .bind(service)
            .bind(bytes.to_vec())
            .bind(now_ms())
            .execute(&self.inner.reads)
            .await?;
        Ok(())
    }

    async fn deploy_to_cluster(&self, deploy: ClusterDeploy<'_>) -> Result<()> {
        let now = now_ms();
        let mut tx = self.inner.reads.begin().await?;
        sqlx::query(STORE_VERSION)
            .bind(deploy.digest)
            .bind(deploy.service)
            .bind(deploy.bytes.to_vec())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO cluster_components (service, digest, deployed_by, deployed_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (service) DO UPDATE SET \
             digest = excluded.digest, deployed_by = excluded.deployed_by, \
             deployed_at = excluded.deployed_at",
        )
        .bind(deploy.service)
        .bind(deploy.digest)
        .bind(deploy.by)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn stored_version(&self, digest: &str) -> Result<Option<(String, Vec<u8>)>> {
        let row = sqlx::query("SELECT service, bytes FROM component_versions WHERE digest = $1")
            .bind(digest)
            .fetch_optional(&self.inner.reads)
            .await?;
        row.map(|row| Ok((row.try_get("service")?, row.try_get("bytes")?)))
            .transpose()
    }

    async fn cluster_components(&self) -> Result<Vec<ClusterComponent>> {
        let rows = sqlx::query(
            "SELECT service, digest, deployed_by, deployed_at FROM cluster_components \
             ORDER BY service",
        )
        .fetch_all(&self.inner.reads)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ClusterComponent {
                    service: row.try_get("service")?,
                    digest: row.try_get("digest")?,
                    deployed_by: row.try_get("deployed_by")?,
                    deployed_at: row.try_get("deployed_at")?,
                })
            })
            .collect()
    }

    async fn record_current(
        &self,
        host: &str,
        service: &str,
        digest: &str,
        deploy_id: Option<&str>,
        released: Option<&str>,
    ) -> Result<()> {
        let now = now_ms();
        let mut tx = self.inner.reads.begin().await?;
        sqlx::query(
            "INSERT INTO host_components (host, service, current_digest, deploy_id, at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (host, service) DO UPDATE SET \
             current_digest = excluded.current_digest, deploy_id = excluded.deploy_id, \
             failed_digest = NULL, error = NULL, at = excluded.at",
        )
        .bind(host)
        .bind(service)
        .bind(digest)
        .bind(deploy_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if let Some(released) = released {
            sqlx::query("UPDATE component_versions SET released_at = $2 WHERE digest = $1")
                .bind(released)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn record_failed(
        &self,
        host: &str,
        service: &str,
        digest: &str,
        deploy_id: Option<&str>,
        error: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE host_components SET failed_digest = $3, error = $4, deploy_id = $5, at = $6 \
             WHERE host = $1 AND service = $2",
        )
        .bind(host)
        .bind(service)
        .bind(digest)
        .bind(error)
        .bind(deploy_id)
        .bind(now_ms())
        .execute(&self.inner.reads)
        .await?;
        Ok(())
    }

    async fn forget_component(&self, host: &str, service: &str) -> Result<()> {
        sqlx::query("DELETE FROM host_components WHERE host = $1 AND service = $2")
            .bind(host)
            .bind(service)
            .execute(&self.inner.reads)
            .await?;
        Ok(())
    }

    async fn host_components(&self, service: Option<&str>) -> Result<Vec<HostComponent>> {
        const SELECT: &str = "SELECT c.host, c.service, c.current_digest, c.failed_digest, \
             c.error, c.deploy_id, c.at, h.heartbeat_at FROM host_components c \
             LEFT JOIN hosts h ON h.id = c.host";
        let rows = match service {
            Some(service) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{SELECT} WHERE c.service = $1 ORDER BY c.host"
                )))
                .bind(service)
                .fetch_all(&self.inner.reads)
                .await?
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{SELECT} ORDER BY c.service, c.host"
                )))
                .fetch_all(&self.inner.reads)
                .await?
            }
        };
        rows.iter().map(host_component).collect()
    }

    async fn prune_versions(&self, before: i64) -> Result<u64> {
        let pruned = sqlx::query(
            "DELETE FROM component_versions WHERE COALESCE(released_at, stored_at) < $1 \
             AND digest NOT IN (SELECT digest FROM cluster_components) \
             AND digest NOT IN (SELECT current_digest FROM host_components) \
             AND digest NOT IN (SELECT version FROM sagas \
                                WHERE status NOT IN ('finished', 'errored'))",
        )
        .bind(before)
        .execute(&self.inner.reads)
        .await?;
        Ok(pruned.rows_affected())
    }
}

fn host_component(row: &AnyRow) -> Result<HostComponent> {
    let failed: Option<String> = row.try_get("failed_digest")?;
    let error: Option<String> = row.try_get("error")?;
    Ok(HostComponent {
        host: row.try_get("host")?,
        service: row.try_get("service")?,
        current: row.try_get("current_digest")?,
        failed: failed.map(|digest| (digest, error.unwrap_or_default())),
        deploy_id: row.try_get("deploy_id")?,
        at: row.try_get("at")?,
        heartbeat_at: row.try_get("heartbeat_at")?,
    })
}
