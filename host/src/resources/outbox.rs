//! The webhooks' outbox: every delivery owed to an endpoint, in a SQLite
//! file under `data/` that outlives the process. A delivery is written
//! (and synced) before anything is sent, and a worker claims it with a
//! lease before an attempt, so a crash loses none and two workers never
//! send the same one at once. Writes from publishers are grouped: many
//! deliveries, one transaction.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};
use std::sync::Arc;

use tokio::sync::{Notify, mpsc, oneshot};

/// A delivery to be written.
pub struct NewDelivery {
    pub id: String,
    pub app: String,
    pub endpoint: String,
    pub topic: String,
    pub body: String,
    pub at_ms: i64,
}

/// A delivery as the outbox holds it.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub id: String,
    pub app: String,
    pub endpoint: String,
    pub topic: String,
    #[serde(skip)]
    pub body: String,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    pub attempts: i64,
    pub next_at_ms: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_ms: i64,
}

/// How an attempt ended.
pub enum Outcome {
    Delivered {
        status: u16,
    },
    Retry {
        status: Option<u16>,
        error: String,
        next_at_ms: i64,
    },
    Dead {
        status: Option<u16>,
        error: String,
    },
}

type Batch = (Vec<NewDelivery>, oneshot::Sender<()>);

pub struct Outbox {
    pool: SqlitePool,
    writes: mpsc::UnboundedSender<Batch>,
    /// Notified after every commit of new deliveries.
    pub committed: Arc<Notify>,
}

const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS deliveries (
        id TEXT PRIMARY KEY, app TEXT NOT NULL, endpoint TEXT NOT NULL, topic TEXT NOT NULL,
        body TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
        next_at_ms INTEGER NOT NULL, lease_ms INTEGER NOT NULL DEFAULT 0, last_status INTEGER,
        last_error TEXT, created_ms INTEGER NOT NULL, done_ms INTEGER)",
    "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_at_ms)",
    "CREATE TABLE IF NOT EXISTS disabled (
        app TEXT NOT NULL, endpoint TEXT NOT NULL, url TEXT NOT NULL, reason TEXT NOT NULL,
        at_ms INTEGER NOT NULL, PRIMARY KEY (app, endpoint))",
];

const COLUMNS: &str = "id, app, endpoint, topic, body, state, attempts, next_at_ms, last_status, last_error, created_ms";

fn delivery(row: &sqlx::sqlite::SqliteRow) -> Delivery {
    Delivery {
        id: row.get(0),
        app: row.get(1),
        endpoint: row.get(2),
        topic: row.get(3),
        body: row.get(4),
        state: row.get(5),
        attempts: row.get(6),
        next_at_ms: row.get(7),
        last_status: row.get(8),
        last_error: row.get(9),
        created_ms: row.get(10),
    }
}

impl Outbox {
    /// Opens (or creates) the outbox file and starts its writer.
    pub async fn open(path: &Path) -> Result<Outbox, String> {
        let fail = |e: sqlx::Error| format!("the webhooks outbox {}: {e}", path.display());
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(fail)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Synced at every commit: a delivery written is one a crash keeps.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        let pool = sqlx::pool::PoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .map_err(fail)?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&pool).await.map_err(fail)?;
        }
        let (writes, queue) = mpsc::unbounded_channel();
        let committed = Arc::new(Notify::new());
        tokio::spawn(write_batches(pool.clone(), queue, committed.clone()));
        Ok(Outbox {
            pool,
            writes,
            committed,
        })
    }

    /// Queues deliveries for writing; the answer resolves once they are
    /// committed (and is dropped unanswered if the host stops first).
    pub fn keep(&self, deliveries: Vec<NewDelivery>) -> oneshot::Receiver<()> {
        let (done, committed) = oneshot::channel();
        let _ = self.writes.send((deliveries, done));
        committed
    }

    /// Pending deliveries whose time has come and that no attempt holds.
    pub async fn due(&self, now_ms: i64, limit: i64) -> Result<Vec<Delivery>, sqlx::Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM deliveries WHERE state = 'pending' AND next_at_ms <= ? AND lease_ms <= ? ORDER BY next_at_ms LIMIT ?"
        )))
        .bind(now_ms)
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(delivery).collect())
    }

    /// When the next pending delivery is due.
    pub async fn next_due(&self) -> Result<Option<i64>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT MIN(MAX(next_at_ms, lease_ms)) FROM deliveries WHERE state = 'pending'",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.get(0))
    }

    /// Takes delivery `id` for one attempt until `lease_until_ms`; false
    /// when another attempt holds it or it is no longer pending.
    pub async fn claim(
        &self,
        id: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE deliveries SET lease_ms = ? WHERE id = ? AND state = 'pending' AND lease_ms <= ?",
        )
        .bind(lease_until_ms)
        .bind(id)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records how an attempt ended and releases the lease.
    pub async fn finish(
        &self,
        id: &str,
        now_ms: i64,
        outcome: &Outcome,
    ) -> Result<(), sqlx::Error> {
        let (state, status, error, next_at) = match outcome {
            Outcome::Delivered { status } => ("delivered", Some(*status), None, None),
            Outcome::Retry {
                status,
                error,
                next_at_ms,
            } => ("pending", *status, Some(error.as_str()), Some(*next_at_ms)),
            Outcome::Dead { status, error } => ("dead", *status, Some(error.as_str()), None),
        };
        sqlx::query(
            "UPDATE deliveries SET state = ?, attempts = attempts + 1, lease_ms = 0, last_status = ?,
             last_error = ?, next_at_ms = COALESCE(?, next_at_ms), done_ms = ? WHERE id = ?",
        )
        .bind(state)
        .bind(status.map(i64::from))
        .bind(error)
        .bind(next_at)
        .bind((state != "pending").then_some(now_ms))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deliveries, newest first: pending and dead ones, or only dead ones.
    pub async fn list(&self, dead_only: bool, limit: i64) -> Result<Vec<Delivery>, sqlx::Error> {
        let states = if dead_only {
            "('dead')"
        } else {
            "('pending', 'dead')"
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM deliveries WHERE state IN {states} ORDER BY created_ms DESC LIMIT ?"
        )))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(delivery).collect())
    }

    /// Makes a dead delivery pending again, due now, with a whole new
    /// schedule; answers it, or `None` when there is no dead one by `id`.
    pub async fn revive(&self, id: &str, now_ms: i64) -> Result<Option<Delivery>, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE deliveries SET state = 'pending', attempts = 0, next_at_ms = ?, lease_ms = 0, done_ms = NULL
             WHERE id = ? AND state = 'dead'",
        )
        .bind(now_ms)
        .bind(id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM deliveries WHERE id = ?"
        )))
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        Ok(Some(delivery(&row)))
    }

    /// Pending and dead deliveries per application and endpoint.
    pub async fn counts(&self) -> Result<Vec<(String, String, String, i64)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT app, endpoint, state, COUNT(*) FROM deliveries WHERE state != 'delivered' GROUP BY app, endpoint, state",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }

    /// Endpoints disabled by a 410, with the URL they had then.
    pub async fn disabled(&self) -> Result<Vec<(String, String, String, String)>, sqlx::Error> {
        let rows = sqlx::query("SELECT app, endpoint, url, reason FROM disabled")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }

    pub async fn disable(
        &self,
        app: &str,
        endpoint: &str,
        url: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT OR REPLACE INTO disabled (app, endpoint, url, reason, at_ms) VALUES (?, ?, ?, ?, ?)")
            .bind(app)
            .bind(endpoint)
            .bind(url)
            .bind(reason)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn enable(&self, app: &str, endpoint: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("DELETE FROM disabled WHERE app = ? AND endpoint = ?")
            .bind(app)
            .bind(endpoint)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

/// The writer: whatever has queued up is written in one transaction, then
/// every publisher in it is answered. A failed write is tried again, never
/// answered as done.
async fn write_batches(
    pool: SqlitePool,
    mut queue: mpsc::UnboundedReceiver<Batch>,
    committed: Arc<Notify>,
) {
    let mut batch: Vec<Batch> = Vec::new();
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < 512
            && let Ok(more) = queue.try_recv()
        {
            batch.push(more);
        }
        loop {
            match write(&pool, &batch).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!("webhooks outbox: cannot write deliveries, trying again: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        for (_, done) in batch.drain(..) {
            let _ = done.send(());
        }
        committed.notify_one();
    }
}

async fn write(pool: &SqlitePool, batch: &[Batch]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for (deliveries, _) in batch {
        for d in deliveries {
            // The id is the event's and the endpoint's: writing one twice
            // is harmless.
            sqlx::query(
                "INSERT OR IGNORE INTO deliveries (id, app, endpoint, topic, body, next_at_ms, created_ms)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&d.id)
            .bind(&d.app)
            .bind(&d.endpoint)
            .bind(&d.topic)
            .bind(&d.body)
            .bind(d.at_ms)
            .bind(d.at_ms)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await
}
