//! The outbox: every delivery owed to a webhook endpoint or a broker
//! bridge, in a SQLite file under `data/` that outlives the process (one
//! file each: `webhooks.sqlite`, `bridges.sqlite`). A delivery is written
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
use tokio::sync::{mpsc, oneshot, watch};

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

/// What the writer is asked to write: new deliveries, claims, how
/// attempts ended. Every write of the outbox goes through its one writer,
/// so writes never wait on each other's locks, and all that is waiting
/// shares one transaction: a busy outbox syncs once for many.
enum Write {
    Keep(Vec<NewDelivery>),
    /// Leases to take (id, until), as of `now_ms`; answers those taken.
    Claim(Vec<(String, i64)>, i64),
    Finish(String, i64, Outcome),
    /// Sent (a bridge's), as of a time.
    Delivered(Vec<String>, i64),
}

/// Who waits for a write: a publisher (only that it is written), or a
/// worker (the ids its claim took).
enum Reply {
    Written(oneshot::Sender<()>),
    Taken(oneshot::Sender<Vec<String>>),
}

type Batch = (Write, Reply);

pub struct Outbox {
    pool: SqlitePool,
    writes: mpsc::UnboundedSender<Batch>,
    /// Counts the commits of new deliveries, so every worker waiting for
    /// work sees each one.
    committed: watch::Sender<u64>,
}

const SCHEMA: [&str; 5] = [
    "CREATE TABLE IF NOT EXISTS deliveries (
        id TEXT PRIMARY KEY, app TEXT NOT NULL, endpoint TEXT NOT NULL, topic TEXT NOT NULL,
        body TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
        next_at_ms INTEGER NOT NULL, lease_ms INTEGER NOT NULL DEFAULT 0, last_status INTEGER,
        last_error TEXT, created_ms INTEGER NOT NULL, done_ms INTEGER)",
    "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_at_ms)",
    // Per endpoint (or bridge), in order: what a worker with free slots takes.
    "CREATE INDEX IF NOT EXISTS deliveries_endpoint ON deliveries (app, endpoint, state, next_at_ms)",
    // Pending and not held by an attempt: when to look next.
    "CREATE INDEX IF NOT EXISTS deliveries_idle ON deliveries (state, lease_ms, next_at_ms)",
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
    pub async fn open(path: &Path, what: &'static str) -> Result<Outbox, String> {
        let fail = |e: sqlx::Error| format!("the {what} outbox {}: {e}", path.display());
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
        let committed = watch::Sender::new(0);
        tokio::spawn(write_batches(pool.clone(), queue, committed.clone(), what));
        Ok(Outbox {
            pool,
            writes,
            committed,
        })
    }

    /// Releases every lease: a host starting takes back what its
    /// predecessor held when it stopped or crashed (the data folder, and so
    /// the outbox, belongs to one host at a time), instead of waiting for
    /// the leases to run out.
    pub async fn release_leases(&self) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE deliveries SET lease_ms = 0 WHERE state = 'pending' AND lease_ms != 0",
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Changes after every commit of new deliveries or ended attempts.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// The pending deliveries of one endpoint, oldest first (a bridge
    /// sends them in order, one worker per bridge: no lease needed).
    pub async fn pending_for(
        &self,
        app: &str,
        endpoint: &str,
        limit: i64,
    ) -> Result<Vec<Delivery>, sqlx::Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM deliveries WHERE app = ? AND endpoint = ? AND state = 'pending' ORDER BY created_ms, rowid LIMIT ?"
        )))
        .bind(app)
        .bind(endpoint)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(delivery).collect())
    }

    /// Marks deliveries delivered.
    pub async fn delivered(&self, ids: Vec<String>, now_ms: i64) -> Result<(), String> {
        self.write(Write::Delivered(ids, now_ms)).await.map(drop)
    }

    /// Forgets deliveries delivered before `before_ms`: the file holds
    /// what is owed, not a history.
    pub async fn prune(&self, before_ms: i64) -> Result<u64, sqlx::Error> {
        let done = sqlx::query("DELETE FROM deliveries WHERE state = 'delivered' AND done_ms < ?")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Queues deliveries for writing; the answer resolves once they are
    /// committed (and is dropped unanswered if the host stops first).
    pub fn keep(&self, deliveries: Vec<NewDelivery>) -> oneshot::Receiver<()> {
        let (done, committed) = oneshot::channel();
        let _ = self
            .writes
            .send((Write::Keep(deliveries), Reply::Written(done)));
        committed
    }

    /// Queues one write and waits until it is committed.
    async fn write(&self, write: Write) -> Result<Vec<String>, String> {
        let (done, written) = oneshot::channel();
        let _ = self.writes.send((write, Reply::Taken(done)));
        written
            .await
            .map_err(|_| "the outbox's writer has stopped".to_owned())
    }

    /// Takes the deliveries `ids` for one attempt each, until their
    /// leases end; answers those it took (a delivery another attempt
    /// holds, or no longer pending, is left out).
    pub async fn claim_many(
        &self,
        ids: Vec<(String, i64)>,
        now_ms: i64,
    ) -> Result<Vec<String>, String> {
        self.write(Write::Claim(ids, now_ms)).await
    }

    /// Pending deliveries of one endpoint whose time has come and that no
    /// attempt holds, the longest due first.
    pub async fn due_for(
        &self,
        app: &str,
        endpoint: &str,
        now_ms: i64,
        limit: i64,
    ) -> Result<Vec<Delivery>, sqlx::Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM deliveries WHERE app = ? AND endpoint = ? AND state = 'pending' AND next_at_ms <= ? AND lease_ms <= ? ORDER BY next_at_ms LIMIT ?"
        )))
        .bind(app)
        .bind(endpoint)
        .bind(now_ms)
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(delivery).collect())
    }

    /// When the next pending delivery that no attempt holds is due (an
    /// attempt that ends wakes its dispatcher, and a lease left by a crash
    /// is found within the dispatcher's longest wait).
    pub async fn next_due(&self) -> Result<Option<i64>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT MIN(next_at_ms) FROM deliveries WHERE state = 'pending' AND lease_ms = 0",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.get(0))
    }

    /// Records how an attempt ended and releases the lease, in the
    /// writer's next transaction; the caller need not wait: until then the
    /// lease stands, so nothing sends the delivery again meanwhile.
    pub fn finish(&self, id: &str, now_ms: i64, outcome: Outcome) {
        let (done, _) = oneshot::channel();
        let _ = self.writes.send((
            Write::Finish(id.to_owned(), now_ms, outcome),
            Reply::Taken(done),
        ));
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

    /// Keeps a delivery that died elsewhere (the cluster's stream) as dead
    /// here, where listing and reviving find it; one this outbox already
    /// holds is left as it is.
    pub async fn bury(
        &self,
        d: NewDelivery,
        attempts: i64,
        status: Option<u16>,
        error: &str,
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT OR IGNORE INTO deliveries (id, app, endpoint, topic, body, state, attempts,
             next_at_ms, last_status, last_error, created_ms, done_ms)
             VALUES (?, ?, ?, ?, ?, 'dead', ?, ?, ?, ?, ?, ?)",
        )
        .bind(&d.id)
        .bind(&d.app)
        .bind(&d.endpoint)
        .bind(&d.topic)
        .bind(&d.body)
        .bind(attempts)
        .bind(now_ms)
        .bind(status.map(i64::from))
        .bind(error)
        .bind(d.at_ms)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
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
    committed: watch::Sender<u64>,
    what: &'static str,
) {
    let mut batch: Vec<Batch> = Vec::new();
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < 512
            && let Ok(more) = queue.try_recv()
        {
            batch.push(more);
        }
        let answers = loop {
            match write(&pool, &batch).await {
                Ok(answers) => break answers,
                Err(e) => {
                    tracing::error!("{what} outbox: cannot write, trying again: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        // New deliveries, and attempts that ended (a retry's next time is
        // now known), change when a worker should look next.
        let kept = batch
            .iter()
            .any(|(w, _)| matches!(w, Write::Keep(_) | Write::Finish(..)));
        for ((_, reply), answer) in batch.drain(..).zip(answers) {
            match reply {
                Reply::Written(done) => {
                    let _ = done.send(());
                }
                Reply::Taken(done) => {
                    let _ = done.send(answer);
                }
            }
        }
        if kept {
            committed.send_modify(|n| *n += 1);
        }
    }
}

/// Writes a batch in one transaction; answers, per write, the ids a claim
/// took (empty for the others).
async fn write(pool: &SqlitePool, batch: &[Batch]) -> Result<Vec<Vec<String>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut answers = Vec::with_capacity(batch.len());
    for (write, _) in batch {
        let mut taken = Vec::new();
        let deliveries = match write {
            Write::Keep(deliveries) => deliveries,
            Write::Claim(leases, now_ms) => {
                for (id, lease_until_ms) in leases {
                    let done = sqlx::query(
                        "UPDATE deliveries SET lease_ms = ? WHERE id = ? AND state = 'pending' AND lease_ms <= ?",
                    )
                    .bind(lease_until_ms)
                    .bind(id)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() == 1 {
                        taken.push(id.clone());
                    }
                }
                answers.push(taken);
                continue;
            }
            Write::Finish(id, now_ms, outcome) => {
                finish(&mut tx, id, *now_ms, outcome).await?;
                answers.push(taken);
                continue;
            }
            Write::Delivered(ids, now_ms) => {
                for id in ids {
                    sqlx::query(
                        "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, done_ms = ? WHERE id = ?",
                    )
                    .bind(now_ms)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
                answers.push(taken);
                continue;
            }
        };
        answers.push(taken);
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
    tx.commit().await?;
    Ok(answers)
}

async fn finish(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
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
    .execute(&mut **tx)
    .await?;
    Ok(())
}
