//! `ferry:plugin/sql`: statements and transactions against the database of
//! the request's application. The pool is handed over per request (an
//! instance may serve requests of several applications), and only to
//! plugins whose manifest grants `database`; every statement runs under the
//! request's deadline.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{Resource, ResourceTable};

use crate::bindings::{SqlExecuted, SqlHost, SqlHostTransaction, SqlRows, SqlValue, WitError};
use crate::database::{Conn, Database, SqlError};

/// A transaction's connection, held in the store's resource table.
pub struct Transaction {
    conn: Option<Conn>,
    /// A statement was cut off (or failed at the connection level): the
    /// connection's state is unknown, so it is closed rather than reused.
    broken: bool,
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
    open: Vec<u32>,
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

    fn database(&self) -> Result<Arc<Database>, WitError> {
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

    fn deadline(&self) -> Instant {
        self.deadline.unwrap_or_else(Instant::now)
    }
}

fn wit_error(code: &str, message: String) -> WitError {
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
        };
        wit_error(code, e.to_string())
    }
}

/// Whether a connection is fit for reuse after `result`.
fn clean<T>(result: &Result<T, SqlError>) -> bool {
    matches!(
        result,
        Ok(_) | Err(SqlError::Refused(_) | SqlError::ServerTimeout(_))
    )
}

/// Runs `op` on `conn` under the deadline.
async fn bounded<T>(
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
async fn pooled<T>(
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

impl SqlView<'_> {
    async fn begin_tx(&mut self) -> wasmtime::Result<Result<Resource<Transaction>, WitError>> {
        let database = match self.state.database() {
            Ok(db) => db,
            Err(e) => return Ok(Err(e)),
        };
        let deadline = self.state.deadline();
        let mut tx = Transaction {
            conn: None,
            broken: true,
        };
        let begun = bounded(deadline, async {
            let mut conn = database.acquire().await?;
            let begun = conn.control("BEGIN").await;
            tx.conn = Some(conn);
            begun
        })
        .await;
        tx.broken = !clean(&begun);
        if let Err(e) = begun {
            return Ok(Err(e.into()));
        }
        let handle = self.table.push(tx)?;
        self.state.open.push(handle.rep());
        Ok(Ok(handle))
    }

    /// Runs `op` on an open transaction's connection under the deadline.
    async fn on_tx<T>(
        &mut self,
        handle: &Resource<Transaction>,
        op: impl AsyncFnOnce(&mut Conn) -> Result<T, SqlError>,
    ) -> wasmtime::Result<Result<T, WitError>> {
        let deadline = self.state.deadline();
        let tx = self.table.get_mut(handle)?;
        let Some(conn) = tx.conn.as_mut() else {
            return Ok(Err(wit_error(
                "bad_request",
                "the transaction is already committed or rolled back".into(),
            )));
        };
        tx.broken = true;
        let result = bounded(deadline, op(conn)).await;
        tx.broken = !clean(&result);
        Ok(result.map_err(WitError::from))
    }

    /// Ends a transaction with `COMMIT` or `ROLLBACK`, and hands its
    /// connection back to the pool.
    async fn finish(
        &mut self,
        handle: &Resource<Transaction>,
        statement: &'static str,
    ) -> wasmtime::Result<Result<(), WitError>> {
        let result = self
            .on_tx(handle, async |conn| conn.control(statement).await)
            .await?;
        let tx = self.table.get_mut(handle)?;
        if result.is_ok() {
            // Clean: dropping the connection returns it to the pool.
            drop(tx.conn.take());
        }
        Ok(result)
    }
}

impl SqlHostTransaction for SqlView<'_> {
    async fn query(
        &mut self,
        handle: Resource<Transaction>,
        statement: String,
        params: Vec<SqlValue>,
    ) -> wasmtime::Result<Result<SqlRows, WitError>> {
        self.on_tx(&handle, async |conn| conn.query(&statement, params).await)
            .await
    }

    async fn execute(
        &mut self,
        handle: Resource<Transaction>,
        statement: String,
        params: Vec<SqlValue>,
    ) -> wasmtime::Result<Result<SqlExecuted, WitError>> {
        self.on_tx(&handle, async |conn| conn.execute(&statement, params).await)
            .await
    }

    async fn commit(
        &mut self,
        handle: Resource<Transaction>,
    ) -> wasmtime::Result<Result<(), WitError>> {
        self.finish(&handle, "COMMIT").await
    }

    async fn rollback(
        &mut self,
        handle: Resource<Transaction>,
    ) -> wasmtime::Result<Result<(), WitError>> {
        self.finish(&handle, "ROLLBACK").await
    }

    async fn drop(&mut self, handle: Resource<Transaction>) -> wasmtime::Result<()> {
        let rep = handle.rep();
        self.state.open.retain(|r| *r != rep);
        // Dropping the entry rolls back whatever was not committed.
        self.table.delete(handle)?;
        Ok(())
    }
}

impl SqlHost for SqlView<'_> {
    async fn query(
        &mut self,
        statement: String,
        params: Vec<SqlValue>,
    ) -> wasmtime::Result<Result<SqlRows, WitError>> {
        let database = match self.state.database() {
            Ok(db) => db,
            Err(e) => return Ok(Err(e)),
        };
        let result = pooled(database, self.state.deadline(), async |conn| {
            conn.query(&statement, params).await
        })
        .await;
        Ok(result.map_err(WitError::from))
    }

    async fn execute(
        &mut self,
        statement: String,
        params: Vec<SqlValue>,
    ) -> wasmtime::Result<Result<SqlExecuted, WitError>> {
        let database = match self.state.database() {
            Ok(db) => db,
            Err(e) => return Ok(Err(e)),
        };
        let result = pooled(database, self.state.deadline(), async |conn| {
            conn.execute(&statement, params).await
        })
        .await;
        Ok(result.map_err(WitError::from))
    }

    async fn begin(&mut self) -> wasmtime::Result<Result<Resource<Transaction>, WitError>> {
        self.begin_tx().await
    }
}
