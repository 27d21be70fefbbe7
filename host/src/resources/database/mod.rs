//! Database pools, one per application, owned by the host. Built (lazily
//! connecting) at start-up from `apps.NAME.database`; the `sql` capability
//! reaches them only through the request's application. Statements and
//! their values are in the plain types below; `capabilities::sql` converts
//! them from and to WIT.

mod conn;
mod decode;
mod dialect;
mod lite;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
// Statements come from plugins by design; their values are always bound.
use sqlx::AssertSqlSafe;
use sqlx::Executor;

pub use conn::{Budget, Conn};
use lite::LitePool;

use crate::config::DatabaseConfig;

/// A parameter, or a value read from a column.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Boolean(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// What a query answered: column names, then one list of values per row.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

/// What a statement that returns no rows did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Executed {
    pub rows_affected: u64,
    pub last_insert_id: Option<i64>,
}

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

/// Why a statement did not run; mapped onto a WIT error by `capabilities::sql`.
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
    /// The statement reaches for something plugins may not touch.
    #[error("{0}")]
    Forbidden(String),
    /// The statement's rows, or the request's transactions, are over a limit.
    #[error("{0}")]
    TooLarge(String),
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
        // A function the authorizer refuses fails as a plain error.
        let refused_function = primary == 1 && db.message().contains("not authorized");
        match primary {
            // AUTH: the authorizer refused (see `lite.rs`).
            _ if refused_function => {
                return SqlError::Forbidden(format!(
                    "the statement uses a function plugins may not: {db}"
                ));
            }
            23 => {
                return SqlError::Forbidden(format!(
                    "the statement uses what plugins may not (ATTACH, DETACH, VACUUM, extensions, or a PRAGMA that is not read-only): {db}"
                ));
            }
            // INTERRUPT: the progress handler stopped it at its deadline.
            9 => return SqlError::Timeout,
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
    Sqlite(LitePool),
    MySql(MySqlPool),
    Postgres(PgPool),
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
                let pool = LitePool::new(options, max, acquire);
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
                            settle_mysql(conn, seconds, statement_ms).await;
                            Ok(())
                        })
                    })
                    // A plugin may change its session (`SET SESSION
                    // max_statement_time = 0`, `autocommit = 0`, the SQL
                    // mode): whatever it did is undone before the connection
                    // serves anyone else, or the connection is closed.
                    .after_release(move |conn, _| {
                        Box::pin(async move { Ok(settle_mysql(conn, seconds, statement_ms).await) })
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
                            conn.execute(AssertSqlSafe(pg_settings(conn))).await?;
                            Ok(())
                        })
                    })
                    // A plugin may change its session (`SET statement_timeout
                    // = 0`, `SET ROLE`, `SET search_path`): every setting goes
                    // back to the connection's defaults (the host's
                    // statement_timeout among them) before the connection
                    // serves anyone else, or the connection is closed.
                    .after_release(|conn, _| {
                        Box::pin(async move {
                            let reset = format!(
                                "SET SESSION AUTHORIZATION DEFAULT; RESET ALL; {}",
                                pg_settings(conn)
                            );
                            Ok(conn.execute(AssertSqlSafe(reset)).await.is_ok())
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
            Pool::Sqlite(p) => p.size(),
            Pool::MySql(p) => (p.size(), p.num_idle()),
            Pool::Postgres(p) => (p.size(), p.num_idle()),
        }
    }
}

/// The session settings the host gives every PostgreSQL connection, beyond
/// the `statement_timeout` of its start-up options.
fn pg_settings(conn: &sqlx::postgres::PgConnection) -> String {
    // A statement cut off at its deadline is left behind by closing its
    // connection; from 14 on, the server then notices within this interval
    // and cancels it, instead of running it to `statement_timeout`.
    if conn.server_version_num().is_some_and(|v| v >= 140_000) {
        "SET client_connection_check_interval = 200".into()
    } else {
        "SELECT 1".into()
    }
}

/// Gives a MariaDB/MySQL connection the host's session settings: the time
/// limit, the default SQL mode, autocommit on. Answers whether it worked.
async fn settle_mysql(conn: &mut sqlx::mysql::MySqlConnection, seconds: f64, ms: u64) -> bool {
    let set = format!(
        "SET SESSION max_statement_time = {seconds}, sql_mode = DEFAULT, autocommit = 1, time_zone = DEFAULT"
    );
    if conn.execute(AssertSqlSafe(set)).await.is_ok() {
        return true;
    }
    // MySQL proper: its limit is `max_execution_time`, for SELECTs only.
    let set = format!(
        "SET SESSION max_execution_time = {ms}, sql_mode = DEFAULT, autocommit = 1, time_zone = DEFAULT"
    );
    conn.execute(AssertSqlSafe(set)).await.is_ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("mysql://root@h/db"), "mysql://root@h/db");
    }
}
