//! A connection checked out of a pool: statements with bound parameters
//! (rows read one at a time, up to a size limit), transaction control, and
//! closing a connection whose state is unknown.

use std::time::Instant;

use futures_util::TryStreamExt;
use sqlx::mysql::MySql;
use sqlx::pool::PoolConnection;
use sqlx::postgres::Postgres;
use sqlx::sqlite::Sqlite;
// Statements come from plugins by design; their values are always bound.
use sqlx::AssertSqlSafe;
use sqlx::{Column, Executor, Row};

use super::decode::{decode_mysql, decode_pg, decode_sqlite};
use super::dialect::number_placeholders;
use super::lite::LiteConn;
use super::{Executed, Rows, SqlError, Value};

/// A connection checked out of a pool, for one statement or a transaction.
pub enum Conn {
    Sqlite(LiteConn),
    MySql(PoolConnection<MySql>),
    Postgres(PoolConnection<Postgres>),
}

/// What one statement may take: time, and bytes of rows held in memory.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub deadline: Instant,
    pub max_result_bytes: usize,
}

/// Adds up what rows hold, and refuses once it passes the budget.
struct Tally {
    bytes: usize,
    max: usize,
}

impl Tally {
    fn add(&mut self, row: &[Value]) -> Result<(), SqlError> {
        self.bytes += row
            .iter()
            .map(|v| match v {
                Value::Text(t) => t.len() + 8,
                Value::Blob(b) => b.len() + 8,
                _ => 16,
            })
            .sum::<usize>();
        if self.bytes > self.max {
            return Err(SqlError::TooLarge(format!(
                "the query's rows are over the limit of {} bytes (max_result_bytes); select fewer rows or columns",
                self.max
            )));
        }
        Ok(())
    }
}

/// Reads rows as they come, decoding each and stopping at the budget.
macro_rules! read_rows {
    ($stream:expr, $decode:expr, $budget:expr) => {{
        let mut stream = $stream;
        let mut tally = Tally {
            bytes: 0,
            max: $budget.max_result_bytes,
        };
        let mut columns = None;
        let mut rows = Vec::new();
        while let Some(row) = stream.try_next().await? {
            if columns.is_none() {
                columns = Some(row.columns().iter().map(|c| c.name().to_owned()).collect());
            }
            let values: Vec<Value> = (0..row.len())
                .map(|i| $decode(&row, i))
                .collect::<Result<_, _>>()?;
            tally.add(&values)?;
            rows.push(values);
        }
        Ok(Rows {
            columns: columns.unwrap_or_default(),
            rows,
        })
    }};
}

impl Conn {
    /// Runs a statement that returns rows.
    pub async fn query(
        &mut self,
        sql: &str,
        params: Vec<Value>,
        budget: Budget,
    ) -> Result<Rows, SqlError> {
        match self {
            Conn::Sqlite(c) => {
                c.set_deadline(Some(budget.deadline));
                let stream = bind_sqlite(sqlx::query(AssertSqlSafe(sql)), params).fetch(&mut **c);
                read_rows!(stream, decode_sqlite, budget)
            }
            Conn::MySql(c) => {
                let stream = bind_mysql(sqlx::query(AssertSqlSafe(sql)), params).fetch(&mut **c);
                read_rows!(stream, decode_mysql, budget)
            }
            Conn::Postgres(c) => {
                let sql = number_placeholders(sql);
                let stream = bind_pg(sqlx::query(AssertSqlSafe(sql)), params).fetch(&mut **c);
                read_rows!(stream, decode_pg, budget)
            }
        }
    }

    /// Runs a statement that returns no rows.
    pub async fn execute(
        &mut self,
        sql: &str,
        params: Vec<Value>,
        budget: Budget,
    ) -> Result<Executed, SqlError> {
        Ok(match self {
            Conn::Sqlite(c) => {
                c.set_deadline(Some(budget.deadline));
                let done = bind_sqlite(sqlx::query(AssertSqlSafe(sql)), params)
                    .execute(&mut **c)
                    .await?;
                Executed {
                    rows_affected: done.rows_affected(),
                    last_insert_id: Some(done.last_insert_rowid()),
                }
            }
            Conn::MySql(c) => {
                let done = bind_mysql(sqlx::query(AssertSqlSafe(sql)), params)
                    .execute(&mut **c)
                    .await?;
                Executed {
                    rows_affected: done.rows_affected(),
                    last_insert_id: i64::try_from(done.last_insert_id())
                        .ok()
                        .filter(|id| *id != 0),
                }
            }
            Conn::Postgres(c) => {
                let sql = number_placeholders(sql);
                let done = bind_pg(sqlx::query(AssertSqlSafe(sql)), params)
                    .execute(&mut **c)
                    .await?;
                Executed {
                    rows_affected: done.rows_affected(),
                    last_insert_id: None,
                }
            }
        })
    }

    /// Runs a transaction-control statement (`BEGIN`, `COMMIT`, `ROLLBACK`)
    /// outside the prepared-statement cache.
    pub async fn control(&mut self, statement: &'static str) -> Result<(), SqlError> {
        match self {
            Conn::Sqlite(c) => (&mut **c).execute(statement).await.map(drop)?,
            Conn::MySql(c) => c.execute(statement).await.map(drop)?,
            Conn::Postgres(c) => c.execute(statement).await.map(drop)?,
        }
        Ok(())
    }

    /// Makes sure the connection is closed instead of going back to the
    /// pool: its state is unknown after a cancelled statement.
    pub fn discard(&mut self) {
        match self {
            Conn::Sqlite(c) => c.discard(),
            Conn::MySql(c) => c.close_on_drop(),
            Conn::Postgres(c) => c.close_on_drop(),
        }
    }
}

type Query<'q, DB> = sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>;

/// Binds every parameter in order; `$null` is the engine's NULL.
macro_rules! bind_all {
    ($q:expr, $params:expr, $null:expr) => {{
        let mut q = $q;
        for p in $params {
            q = match p {
                Value::Null => q.bind($null),
                Value::Boolean(b) => q.bind(b),
                Value::Int(i) => q.bind(i),
                Value::Float(f) => q.bind(f),
                Value::Text(t) => q.bind(t),
                Value::Blob(b) => q.bind(b),
            };
        }
        q
    }};
}

fn bind_sqlite(q: Query<'_, Sqlite>, params: Vec<Value>) -> Query<'_, Sqlite> {
    bind_all!(q, params, None::<i64>)
}

fn bind_mysql(q: Query<'_, MySql>, params: Vec<Value>) -> Query<'_, MySql> {
    bind_all!(q, params, None::<String>)
}

/// A NULL of no particular type, so PostgreSQL infers it from where it is
/// used (a typed NULL would be refused by a column of another type).
struct UntypedNull;

impl sqlx::Type<Postgres> for UntypedNull {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        sqlx::postgres::PgTypeInfo::with_oid(sqlx::postgres::types::Oid(0))
    }
}

impl sqlx::Encode<'_, Postgres> for UntypedNull {
    fn encode_by_ref(
        &self,
        _: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        Ok(sqlx::encode::IsNull::Yes)
    }
}

fn bind_pg(q: Query<'_, Postgres>, params: Vec<Value>) -> Query<'_, Postgres> {
    bind_all!(q, params, UntypedNull)
}
