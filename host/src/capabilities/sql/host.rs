//! The `sql` host functions: statements on a pooled connection, and the
//! transaction resource's methods.

use wasmtime::component::Resource;

use super::convert::{executed, rows, values};
use super::{SqlView, Transaction, bounded, clean, pooled, wit_error};
use crate::capabilities::bindings::{
    SqlExecuted, SqlHost, SqlHostTransaction, SqlRows, SqlValue, WitError,
};
use crate::resources::database::{Budget, Conn, SqlError};

impl SqlView<'_> {
    async fn begin_tx(&mut self) -> wasmtime::Result<Result<Resource<Transaction>, WitError>> {
        let database = match self.state.database() {
            Ok(db) => db,
            Err(e) => return Ok(Err(e)),
        };
        let deadline = self.state.deadline();
        let config = database.config();
        let limit = config.max_open_transactions.min(config.max_connections) as usize;
        // Only transactions still holding a connection count.
        let holding = self
            .state
            .open
            .iter()
            .filter(|rep| {
                self.table
                    .get(&Resource::<Transaction>::new_own(**rep))
                    .is_ok_and(|tx| tx.conn.is_some())
            })
            .count();
        if holding >= limit {
            return Ok(Err(wit_error(
                "too_large",
                format!(
                    "this request already has {limit} open transactions, the most one may have (max_open_transactions); commit or drop one first"
                ),
            )));
        }
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
        op: impl AsyncFnOnce(&mut Conn, Budget) -> Result<T, SqlError>,
    ) -> wasmtime::Result<Result<T, WitError>> {
        let deadline = self.state.deadline();
        let budget = match self.state.database() {
            Ok(database) => self.state.budget(&database),
            Err(e) => return Ok(Err(e)),
        };
        let tx = self.table.get_mut(handle)?;
        let Some(conn) = tx.conn.as_mut() else {
            return Ok(Err(wit_error(
                "bad_request",
                "the transaction is already committed or rolled back".into(),
            )));
        };
        tx.broken = true;
        let result = bounded(deadline, op(conn, budget)).await;
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
            .on_tx(handle, async |conn, _| conn.control(statement).await)
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
        self.on_tx(&handle, async |conn, budget| {
            conn.query(&statement, values(params), budget)
                .await
                .map(rows)
        })
        .await
    }

    async fn execute(
        &mut self,
        handle: Resource<Transaction>,
        statement: String,
        params: Vec<SqlValue>,
    ) -> wasmtime::Result<Result<SqlExecuted, WitError>> {
        self.on_tx(&handle, async |conn, budget| {
            conn.execute(&statement, values(params), budget)
                .await
                .map(executed)
        })
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
        let budget = self.state.budget(&database);
        let result = pooled(database, self.state.deadline(), async |conn| {
            conn.query(&statement, values(params), budget)
                .await
                .map(rows)
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
        let budget = self.state.budget(&database);
        let result = pooled(database, self.state.deadline(), async |conn| {
            conn.execute(&statement, values(params), budget)
                .await
                .map(executed)
        })
        .await;
        Ok(result.map_err(WitError::from))
    }

    async fn begin(&mut self) -> wasmtime::Result<Result<Resource<Transaction>, WitError>> {
        self.begin_tx().await
    }
}
