//! A connection checked out of a pool: statements with bound parameters,
//! transaction control, and closing a connection whose state is unknown.

use sqlx::mysql::MySql;
use sqlx::pool::PoolConnection;
use sqlx::postgres::Postgres;
use sqlx::sqlite::Sqlite;
// Statements come from plugins by design; their values are always bound.
use sqlx::AssertSqlSafe;
use sqlx::{Column, Executor, Row};

use super::decode::{decode_mysql, decode_pg, decode_sqlite};
use super::dialect::number_placeholders;
use super::{Executed, Rows, SqlError, Value};

/// A connection checked out of a pool, for one statement or a transaction.
pub enum Conn {
    Sqlite(PoolConnection<Sqlite>),
    MySql(PoolConnection<MySql>),
    Postgres(PoolConnection<Postgres>),
}

impl Conn {
    /// Runs a statement that returns rows.
    pub async fn query(&mut self, sql: &str, params: Vec<Value>) -> Result<Rows, SqlError> {
        match self {
            Conn::Sqlite(c) => {
                let rows = bind_sqlite(sqlx::query(AssertSqlSafe(sql)), params)
                    .fetch_all(&mut **c)
                    .await?;
                rows_of(&rows, decode_sqlite)
            }
            Conn::MySql(c) => {
                let rows = bind_mysql(sqlx::query(AssertSqlSafe(sql)), params)
                    .fetch_all(&mut **c)
                    .await?;
                rows_of(&rows, decode_mysql)
            }
            Conn::Postgres(c) => {
                let sql = number_placeholders(sql);
                let rows = bind_pg(sqlx::query(AssertSqlSafe(sql)), params)
                    .fetch_all(&mut **c)
                    .await?;
                rows_of(&rows, decode_pg)
            }
        }
    }

    /// Runs a statement that returns no rows.
    pub async fn execute(
        &mut self,
        sql: &str,
        params: Vec<Value>,
    ) -> Result<Executed, SqlError> {
        Ok(match self {
            Conn::Sqlite(c) => {
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
            Conn::Sqlite(c) => c.execute(statement).await.map(drop)?,
            Conn::MySql(c) => c.execute(statement).await.map(drop)?,
            Conn::Postgres(c) => c.execute(statement).await.map(drop)?,
        }
        Ok(())
    }

    /// Makes sure the connection is closed instead of going back to the
    /// pool: its state is unknown after a cancelled statement.
    pub fn discard(&mut self) {
        match self {
            Conn::Sqlite(c) => c.close_on_drop(),
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

fn rows_of<R: Row>(
    rows: &[R],
    decode: fn(&R, usize) -> Result<Value, SqlError>,
) -> Result<Rows, SqlError> {
    let columns = match rows.first() {
        Some(row) => row.columns().iter().map(|c| c.name().to_owned()).collect(),
        None => Vec::new(),
    };
    let rows = rows
        .iter()
        .map(|row| (0..row.len()).map(|i| decode(row, i)).collect())
        .collect::<Result<_, _>>()?;
    Ok(Rows { columns, rows })
}
