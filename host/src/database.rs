//! Database pools, one per application, owned by the host. Built (lazily
//! connecting) at start-up from `apps.NAME.database`; the `sql` interface
//! reaches them only through the request's application. This module turns
//! WIT values into bound parameters and rows back into WIT values, for each
//! of the three engines.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySql, MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, Postgres};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
};
// Statements come from plugins by design; their values are always bound.
use sqlx::AssertSqlSafe;
use sqlx::{Column, Executor, Row, TypeInfo, ValueRef};

use crate::bindings::{SqlExecuted, SqlRows, SqlValue};
use crate::config::DatabaseConfig;

/// Which engine a pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    MySql,
    Postgres,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::MySql => "mysql",
            Engine::Postgres => "postgres",
        }
    }
}

/// Why a statement did not run; mapped onto a WIT error by `interfaces::sql`.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The database refused the statement (syntax, constraint, types).
    #[error("{0}")]
    Refused(String),
    /// The database cannot be reached, or no connection was free in time.
    #[error("{0}")]
    Unavailable(String),
    #[error("the request's deadline passed while the statement ran")]
    Timeout,
    /// The database's own limit (`statement_timeout_ms`, a lock wait) ran
    /// out; the connection is still sound.
    #[error("{0}")]
    ServerTimeout(String),
}

impl From<sqlx::Error> for SqlError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Database(db) => classify(&*db),
            sqlx::Error::PoolTimedOut => {
                SqlError::Unavailable("no database connection became free in time".into())
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => {
                SqlError::Unavailable(format!("the database cannot be reached: {e}"))
            }
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
                SqlError::Refused(format!("cannot read a column: {e}"))
            }
            other => SqlError::Unavailable(format!("database failure: {other}")),
        }
    }
}

/// Sorts an error the database reported: the statement's own fault
/// (`Refused`), or the server's state (`Unavailable`: shutting down,
/// connection lost, out of resources, a deadlock worth retrying; `Timeout`:
/// a server-side time limit or lock wait ran out).
fn classify(db: &dyn sqlx::error::DatabaseError) -> SqlError {
    enum Kind {
        Refused,
        Unavailable,
        Timeout,
    }
    let kind = if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        match pg.code() {
            "57014" | "55P03" => Kind::Timeout,
            "40001" | "40P01" => Kind::Unavailable,
            code if ["08", "53", "57", "58"].contains(&&code[..2.min(code.len())]) => {
                Kind::Unavailable
            }
            _ => Kind::Refused,
        }
    } else if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        match my.number() {
            // Statement time limits (MariaDB, MySQL) and lock waits.
            1969 | 3024 | 1205 => Kind::Timeout,
            // Shutdown, killed connection, too many connections, network
            // errors, server gone, deadlock.
            1053 | 1927 | 1040 | 1152..=1161 | 2006 | 2013 | 1213 => Kind::Unavailable,
            _ => Kind::Refused,
        }
    } else if let Some(lite) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
        let code = sqlx::error::DatabaseError::code(lite);
        let primary = code.and_then(|c| c.parse::<i32>().ok()).unwrap_or(0) & 0xff;
        match primary {
            // BUSY and LOCKED after `busy_timeout`.
            5 | 6 => Kind::Timeout,
            // NOMEM, IOERR, CORRUPT, FULL, CANTOPEN, NOTADB.
            7 | 10 | 11 | 13 | 14 | 26 => Kind::Unavailable,
            _ => Kind::Refused,
        }
    } else {
        Kind::Refused
    };
    match kind {
        Kind::Refused => SqlError::Refused(format!("database error: {db}")),
        Kind::Unavailable => {
            SqlError::Unavailable(format!("the database cannot serve this now: {db}"))
        }
        Kind::Timeout => {
            SqlError::ServerTimeout(format!("the database gave up on the statement: {db}"))
        }
    }
}

/// One application's pool.
pub enum Pool {
    Sqlite(SqlitePool),
    MySql(MySqlPool),
    Postgres(PgPool),
}

/// A connection checked out of a pool, for one statement or a transaction.
pub enum Conn {
    Sqlite(PoolConnection<Sqlite>),
    MySql(PoolConnection<MySql>),
    Postgres(PoolConnection<Postgres>),
}

pub struct Database {
    pool: Pool,
    engine: Engine,
    /// What the pool was opened with, to tell on a reload whether it can stay.
    config: DatabaseConfig,
}

impl Database {
    /// A pool for `config` (or the default SQLite file for `app` under
    /// `data`). Connections are made on first use, so a database that is
    /// down at start-up delays nothing and recovers by itself.
    pub fn open(app: &str, config: &DatabaseConfig, data: &Path) -> Result<Database, String> {
        let acquire = Duration::from_millis(config.acquire_timeout_ms);
        let max = config.max_connections;
        let statement_ms = config.statement_timeout_ms;
        let url = config.url.clone().unwrap_or_else(|| {
            format!(
                "sqlite:{}",
                data.join("db").join(format!("{app}.sqlite")).display()
            )
        });
        let (scheme, _) = url.split_once(':').ok_or_else(|| {
            format!(
                "url `{}` has no scheme (sqlite:, mysql:, postgres:)",
                redact(&url)
            )
        })?;
        match scheme {
            "sqlite" => {
                let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
                let path = Path::new(path);
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| format!("cannot create the folder {}: {e}", dir.display()))?;
                }
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_millis(statement_ms))
                    .foreign_keys(true);
                let pool = SqlitePoolOptions::new()
                    .max_connections(max)
                    .acquire_timeout(acquire)
                    .connect_lazy_with(options);
                Ok(Database {
                    pool: Pool::Sqlite(pool),
                    engine: Engine::Sqlite,
                    config: config.clone(),
                })
            }
            "mysql" | "mariadb" => {
                let url = url.replacen("mariadb:", "mysql:", 1);
                let options = MySqlConnectOptions::from_str(&url)
                    .map_err(|e| format!("url `{}`: {e}", redact(&url)))?;
                // MariaDB's limit is in seconds and covers every statement.
                let seconds = statement_ms as f64 / 1000.0;
                let pool = MySqlPoolOptions::new()
                    .max_connections(max)
                    .acquire_timeout(acquire)
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            let set = format!("SET SESSION max_statement_time = {seconds}");
                            if conn.execute(AssertSqlSafe(set)).await.is_err() {
                                // MySQL proper: SELECTs only, in milliseconds.
                                let set =
                                    format!("SET SESSION max_execution_time = {statement_ms}");
                                let _ = conn.execute(AssertSqlSafe(set)).await;
                            }
                            Ok(())
                        })
                    })
                    .connect_lazy_with(options);
                Ok(Database {
                    pool: Pool::MySql(pool),
                    engine: Engine::MySql,
                    config: config.clone(),
                })
            }
            "postgres" | "postgresql" => {
                let options = PgConnectOptions::from_str(&url)
                    .map_err(|e| format!("url `{}`: {e}", redact(&url)))?
                    .options([("statement_timeout", format!("{statement_ms}ms"))]);
                let pool = PgPoolOptions::new()
                    .max_connections(max)
                    .acquire_timeout(acquire)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // A statement cut off at its deadline is left
                            // behind by closing its connection; from 14 on,
                            // the server then notices within this interval
                            // and cancels it, instead of running it to
                            // `statement_timeout`.
                            if conn.server_version_num().is_some_and(|v| v >= 140_000) {
                                conn.execute("SET client_connection_check_interval = 200")
                                    .await?;
                            }
                            Ok(())
                        })
                    })
                    .connect_lazy_with(options);
                Ok(Database {
                    pool: Pool::Postgres(pool),
                    engine: Engine::Postgres,
                    config: config.clone(),
                })
            }
            other => Err(format!(
                "url scheme `{other}:` is not supported (sqlite:, mysql:, mariadb:, postgres:)"
            )),
        }
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    pub fn config(&self) -> &DatabaseConfig {
        &self.config
    }

    /// Checks a connection out of the pool.
    pub async fn acquire(&self) -> Result<Conn, SqlError> {
        Ok(match &self.pool {
            Pool::Sqlite(p) => Conn::Sqlite(p.acquire().await?),
            Pool::MySql(p) => Conn::MySql(p.acquire().await?),
            Pool::Postgres(p) => Conn::Postgres(p.acquire().await?),
        })
    }

    /// Connections open and idle, for status.
    pub fn pool_size(&self) -> (u32, usize) {
        match &self.pool {
            Pool::Sqlite(p) => (p.size(), p.num_idle()),
            Pool::MySql(p) => (p.size(), p.num_idle()),
            Pool::Postgres(p) => (p.size(), p.num_idle()),
        }
    }
}

/// A URL with its password replaced, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(start), Some(at)) if at > start => {
            let userinfo = &url[start + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..start + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Rewrites `?` placeholders as `$1, $2, ...` for PostgreSQL, leaving `?`
/// inside quoted strings, quoted identifiers and comments alone.
pub fn number_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                out.push(c);
                let mut prev = ' ';
                for d in chars.by_ref() {
                    out.push(d);
                    if prev == '*' && d == '/' {
                        break;
                    }
                    prev = d;
                }
            }
            '?' => {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            }
            _ => out.push(c),
        }
    }
    out
}

impl Conn {
    /// Runs a statement that returns rows.
    pub async fn query(&mut self, sql: &str, params: Vec<SqlValue>) -> Result<SqlRows, SqlError> {
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
        params: Vec<SqlValue>,
    ) -> Result<SqlExecuted, SqlError> {
        Ok(match self {
            Conn::Sqlite(c) => {
                let done = bind_sqlite(sqlx::query(AssertSqlSafe(sql)), params)
                    .execute(&mut **c)
                    .await?;
                SqlExecuted {
                    rows_affected: done.rows_affected(),
                    last_insert_id: Some(done.last_insert_rowid()),
                }
            }
            Conn::MySql(c) => {
                let done = bind_mysql(sqlx::query(AssertSqlSafe(sql)), params)
                    .execute(&mut **c)
                    .await?;
                SqlExecuted {
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
                SqlExecuted {
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
                SqlValue::Null => q.bind($null),
                SqlValue::Boolean(b) => q.bind(b),
                SqlValue::Int(i) => q.bind(i),
                SqlValue::Float(f) => q.bind(f),
                SqlValue::Text(t) => q.bind(t),
                SqlValue::Blob(b) => q.bind(b),
            };
        }
        q
    }};
}

fn bind_sqlite(q: Query<'_, Sqlite>, params: Vec<SqlValue>) -> Query<'_, Sqlite> {
    bind_all!(q, params, None::<i64>)
}

fn bind_mysql(q: Query<'_, MySql>, params: Vec<SqlValue>) -> Query<'_, MySql> {
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

fn bind_pg(q: Query<'_, Postgres>, params: Vec<SqlValue>) -> Query<'_, Postgres> {
    bind_all!(q, params, UntypedNull)
}

fn rows_of<R: Row>(
    rows: &[R],
    decode: fn(&R, usize) -> Result<SqlValue, SqlError>,
) -> Result<SqlRows, SqlError> {
    let columns = match rows.first() {
        Some(row) => row.columns().iter().map(|c| c.name().to_owned()).collect(),
        None => Vec::new(),
    };
    let rows = rows
        .iter()
        .map(|row| (0..row.len()).map(|i| decode(row, i)).collect())
        .collect::<Result<_, _>>()?;
    Ok(SqlRows { columns, rows })
}

fn unsupported(column: &str, type_name: &str) -> SqlError {
    SqlError::Refused(format!(
        "column `{column}` has type {type_name}, which Ferry does not read; cast it to text in the query"
    ))
}

fn date(d: time::Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

fn clock(t: time::Time) -> String {
    let whole = format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second());
    match t.microsecond() {
        0 => whole,
        us => format!("{whole}.{us:06}"),
    }
}

fn timestamp(t: time::PrimitiveDateTime) -> String {
    format!("{}T{}", date(t.date()), clock(t.time()))
}

fn timestamp_utc(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!("{}T{}Z", date(t.date()), clock(t.time()))
}

macro_rules! get {
    ($row:expr, $i:expr, $t:ty) => {
        $row.try_get::<$t, _>($i)?
    };
}

fn decode_sqlite(row: &sqlx::sqlite::SqliteRow, i: usize) -> Result<SqlValue, SqlError> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(SqlValue::Null);
    }
    let declared = row.column(i).type_info().name().to_ascii_uppercase();
    let stored = raw.type_info().name().to_owned();
    Ok(match stored.as_str() {
        "INTEGER" | "BOOLEAN" if declared == "BOOLEAN" => SqlValue::Boolean(get!(row, i, i64) != 0),
        "INTEGER" | "BOOLEAN" | "INT8" => SqlValue::Int(get!(row, i, i64)),
        "REAL" | "NUMERIC" => SqlValue::Float(get!(row, i, f64)),
        "BLOB" => SqlValue::Blob(get!(row, i, Vec<u8>)),
        _ => SqlValue::Text(get!(row, i, String)),
    })
}

fn decode_mysql(row: &sqlx::mysql::MySqlRow, i: usize) -> Result<SqlValue, SqlError> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(SqlValue::Null);
    }
    let column = row.column(i);
    let name = column.type_info().name();
    Ok(match name {
        "BOOLEAN" => SqlValue::Boolean(get!(row, i, bool)),
        "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" => SqlValue::Int(get!(row, i, i64)),
        "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "MEDIUMINT UNSIGNED" | "INT UNSIGNED"
        | "BIGINT UNSIGNED" | "YEAR" | "BIT" => {
            let n = get!(row, i, u64);
            i64::try_from(n).map_or_else(|_| SqlValue::Text(n.to_string()), SqlValue::Int)
        }
        "FLOAT" => SqlValue::Float(f64::from(get!(row, i, f32))),
        "DOUBLE" => SqlValue::Float(get!(row, i, f64)),
        // Sent as text by the server: passed on digit for digit.
        "DECIMAL" => SqlValue::Text(row.try_get_unchecked::<String, _>(i)?),
        "DATE" => SqlValue::Text(date(get!(row, i, time::Date))),
        "TIME" => SqlValue::Text(clock(get!(row, i, time::Time))),
        "DATETIME" => SqlValue::Text(timestamp(get!(row, i, time::PrimitiveDateTime))),
        "TIMESTAMP" => SqlValue::Text(timestamp_utc(get!(row, i, time::OffsetDateTime))),
        "BLOB" | "TINYBLOB" | "MEDIUMBLOB" | "LONGBLOB" | "BINARY" | "VARBINARY" => {
            SqlValue::Blob(get!(row, i, Vec<u8>))
        }
        "VARCHAR" | "CHAR" | "TEXT" | "TINYTEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM" | "SET"
        | "JSON" => SqlValue::Text(get!(row, i, String)),
        other => return Err(unsupported(column.name(), other)),
    })
}

fn decode_pg(row: &sqlx::postgres::PgRow, i: usize) -> Result<SqlValue, SqlError> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(SqlValue::Null);
    }
    let column = row.column(i);
    let name = column.type_info().name();
    Ok(match name {
        "BOOL" => SqlValue::Boolean(get!(row, i, bool)),
        "INT2" => SqlValue::Int(i64::from(get!(row, i, i16))),
        "INT4" => SqlValue::Int(i64::from(get!(row, i, i32))),
        "INT8" => SqlValue::Int(get!(row, i, i64)),
        "OID" => SqlValue::Int(i64::from(get!(row, i, sqlx::postgres::types::Oid).0)),
        "FLOAT4" => SqlValue::Float(f64::from(get!(row, i, f32))),
        "FLOAT8" => SqlValue::Float(get!(row, i, f64)),
        "NUMERIC" => match raw.format() {
            sqlx::postgres::PgValueFormat::Text => SqlValue::Text(get!(row, i, String)),
            sqlx::postgres::PgValueFormat::Binary => SqlValue::Text(
                pg_numeric(raw.as_bytes().map_err(sqlx::Error::Decode)?).ok_or_else(|| {
                    SqlError::Refused(format!("column `{}`: malformed NUMERIC", column.name()))
                })?,
            ),
        },
        "DATE" => SqlValue::Text(date(get!(row, i, time::Date))),
        "TIME" => SqlValue::Text(clock(get!(row, i, time::Time))),
        "TIMESTAMP" => SqlValue::Text(timestamp(get!(row, i, time::PrimitiveDateTime))),
        "TIMESTAMPTZ" => SqlValue::Text(timestamp_utc(get!(row, i, time::OffsetDateTime))),
        "BYTEA" => SqlValue::Blob(get!(row, i, Vec<u8>)),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" | "UNKNOWN" => {
            SqlValue::Text(get!(row, i, String))
        }
        other => return Err(unsupported(column.name(), other)),
    })
}

/// PostgreSQL's binary NUMERIC as plain decimal text with the column's
/// scale (`12.50`, not `12.5` or `12.5000`), at any precision.
///
/// The format: digit count, weight (the power of 10000 of the first digit),
/// sign, display scale, then base-10000 digits, all big-endian 16-bit.
fn pg_numeric(bytes: &[u8]) -> Option<String> {
    let word = |i: usize| -> Option<u16> {
        Some(u16::from_be_bytes(
            bytes.get(i * 2..i * 2 + 2)?.try_into().ok()?,
        ))
    };
    let ndigits = word(0)? as usize;
    let weight = word(1)? as i16 as i64;
    let sign = word(2)?;
    let dscale = word(3)? as usize;
    let digits: Vec<u16> = (0..ndigits).map(|i| word(4 + i)).collect::<Option<_>>()?;
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        _ => return None,
    }
    // Digit group `g` is worth 10000^(weight - g).
    let group = |g: i64| -> u16 {
        usize::try_from(g)
            .ok()
            .and_then(|g| digits.get(g).copied())
            .unwrap_or(0)
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        out.push_str(&group(0).to_string());
        for g in 1..=weight {
            out.push_str(&format!("{:04}", group(g)));
        }
    }
    if dscale > 0 {
        let mut fraction = String::with_capacity(dscale + 4);
        let mut g = weight + 1;
        while fraction.len() < dscale {
            fraction.push_str(&format!("{:04}", group(g)));
            g += 1;
        }
        fraction.truncate(dscale);
        out.push('.');
        out.push_str(&fraction);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_outside_quotes_and_comments() {
        assert_eq!(
            number_placeholders(
                "SELECT * FROM t WHERE a = ? AND b = '?' AND \"c?\" = ? -- ?\n AND d = ? /* ? */"
            ),
            "SELECT * FROM t WHERE a = $1 AND b = '?' AND \"c?\" = $2 -- ?\n AND d = $3 /* ? */"
        );
    }

    fn numeric(ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut b = Vec::new();
        for w in [ndigits, weight as u16, sign, dscale].iter().chain(digits) {
            b.extend_from_slice(&w.to_be_bytes());
        }
        b
    }

    #[test]
    fn pg_numerics_keep_their_scale() {
        // 12.50: digits [12, 5000], weight 0, scale 2.
        assert_eq!(
            pg_numeric(&numeric(2, 0, 0, 2, &[12, 5000])).unwrap(),
            "12.50"
        );
        // -123456789.000001: [1, 2345, 6789, 0, 100], weight 2, scale 6.
        assert_eq!(
            pg_numeric(&numeric(5, 2, 0x4000, 6, &[1, 2345, 6789, 0, 100])).unwrap(),
            "-123456789.000001"
        );
        // 0.00005: [5000], weight -2, scale 5.
        assert_eq!(
            pg_numeric(&numeric(1, -2, 0, 5, &[5000])).unwrap(),
            "0.00005"
        );
        // 20000: [2], weight 1, scale 0.
        assert_eq!(pg_numeric(&numeric(1, 1, 0, 0, &[2])).unwrap(), "20000");
        assert_eq!(pg_numeric(&numeric(0, 0, 0xC000, 0, &[])).unwrap(), "NaN");
        assert_eq!(pg_numeric(&numeric(0, 0, 0, 3, &[])).unwrap(), "0.000");
        assert!(pg_numeric(&[0, 1]).is_none());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("mysql://root@h/db"), "mysql://root@h/db");
    }
}
