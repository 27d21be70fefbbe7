//! `ferry:plugin/sql`: statements and transactions against the database of
//! the request's application. The pool is handed over per request (an
//! instance may serve requests of several applications), and only to
//! plugins whose manifest grants `database`; every statement runs under the
//! request's deadline.
//!
//! `mod.rs` holds the capability's per-instance state and lifecycle,
//! `host.rs` the WIT host functions, `convert.rs` the WIT ↔ native values.

mod convert;
mod host;

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{Resource, ResourceTable};

use super::bindings::WitError;
use crate::resources::database::{Budget, Conn, Database, SqlError};

/// A transaction's connection, held in the store's resource table.
pub struct Transaction {
    pub(super) conn: Option<Conn>,
    /// A statement was cut off (or failed at the connection level): the
    /// connection's state is unknown, so it is closed rather than reused.
    pub(super) broken: bool,
}

impl Drop for Transaction {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if self.broken {
            // Closing the connection ends the transaction on the server.
            conn.discard();
            return;
        }
        // Dropped without commit: the guest let go of it, the request ended,
        // or the instance trapped or timed out. Roll back before the
        // connection goes back to the pool.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let rolled_back = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    conn.control("ROLLBACK"),
                )
                .await;
                if !matches!(rolled_back, Ok(Ok(()))) {
                    conn.discard();
                }
            });
        } else {
            conn.discard();
        }
    }
}

/// Per-store state of the `sql` interface.
pub struct SqlState {
    plugin: Arc<str>,
    /// Whether the plugin's manifest grants the database.
    granted: bool,
    /// The current request's application database (set only when granted).
    database: Option<Arc<Database>>,
    app: Arc<str>,
    deadline: Option<Instant>,
    /// Transactions begun during the current request.
    pub(super) open: Vec<u32>,
}

impl SqlState {
    pub fn new(plugin: Arc<str>, granted: bool) -> Self {
        SqlState {
            plugin,
            granted,
            database: None,
            app: Arc::from(""),
            deadline: None,
            open: Vec::new(),
        }
    }

    pub fn begin_request(
        &mut self,
        app: Arc<str>,
        database: Option<Arc<Database>>,
        deadline: Instant,
    ) {
        self.app = app;
        self.database = database.filter(|_| self.granted);
        self.deadline = Some(deadline);
    }

    /// Rolls back what the request left open (a transaction the plugin
    /// neither committed nor dropped), so nothing leaks into the next
    /// request this instance serves.
    pub fn end_request(&mut self, table: &mut ResourceTable) {
        for rep in self.open.drain(..) {
            let _ = table.delete(Resource::<Transaction>::new_own(rep));
        }
        self.database = None;
        self.deadline = None;
    }

    pub(super) fn database(&self) -> Result<Arc<Database>, WitError> {
        if !self.granted {
            return Err(wit_error(
                "forbidden",
                format!(
                    "plugin `{}` is not granted the database; add `permissions: {{database: true}}` to its manifest",
                    self.plugin
                ),
            ));
        }
        self.database.clone().ok_or_else(|| {
            wit_error(
                "unavailable",
                format!("application `{}` has no database", self.app),
            )
        })
    }

    pub(super) fn deadline(&self) -> Instant {
        self.deadline.unwrap_or_else(Instant::now)
    }

    /// What one statement may take: the request's deadline, and the
    /// database's `max_result_bytes` of rows.
    pub(super) fn budget(&self, database: &Database) -> Budget {
        Budget {
            deadline: self.deadline(),
            max_result_bytes: database.config().max_result_bytes,
        }
    }
}

pub(crate) fn wit_error(code: &str, message: String) -> WitError {
    WitError {
        code: code.to_owned(),
        message,
    }
}

impl From<SqlError> for WitError {
    fn from(e: SqlError) -> Self {
        let code = match e {
            SqlError::Refused(_) => "bad_request",
            SqlError::Unavailable(_) => "unavailable",
            SqlError::Timeout | SqlError::ServerTimeout(_) => "timeout",
            SqlError::Forbidden(_) => "forbidden",
            SqlError::TooLarge(_) => "too_large",
        };
        wit_error(code, e.to_string())
    }
}

/// Whether a connection is fit for reuse after `result`.
pub(super) fn clean<T>(result: &Result<T, SqlError>) -> bool {
    matches!(
        result,
        Ok(_) | Err(SqlError::Refused(_) | SqlError::ServerTimeout(_) | SqlError::Forbidden(_))
    )
}

/// Runs `op` on `conn` under the deadline.
pub(super) async fn bounded<T>(
    deadline: Instant,
    op: impl Future<Output = Result<T, SqlError>>,
) -> Result<T, SqlError> {
    match tokio::time::timeout_at(deadline.into(), op).await {
        Ok(result) => result,
        Err(_) => Err(SqlError::Timeout),
    }
}

/// One statement on a connection of its own, returned to the pool after
/// (or closed if it was cut off).
pub(super) async fn pooled<T>(
    database: Arc<Database>,
    deadline: Instant,
    op: impl AsyncFnOnce(&mut Conn) -> Result<T, SqlError>,
) -> Result<T, SqlError> {
    struct Checkout {
        conn: Conn,
        clean: bool,
    }
    impl Drop for Checkout {
        fn drop(&mut self) {
            if !self.clean {
                self.conn.discard();
            }
        }
    }
    let conn = bounded(deadline, database.acquire()).await?;
    let mut checkout = Checkout { conn, clean: false };
    let result = bounded(deadline, op(&mut checkout.conn)).await;
    checkout.clean = clean(&result);
    result
}

/// The `sql` interface's view of the store: its own state and the resource
/// table it shares with WASI.
pub struct SqlView<'a> {
    pub state: &'a mut SqlState,
    pub table: &'a mut ResourceTable,
}

/// Names the projection the linker uses to reach [`SqlView`].
pub struct HasSql;

impl wasmtime::component::HasData for HasSql {
    type Data<'a> = SqlView<'a>;
}
