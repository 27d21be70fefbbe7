//! SQLite connections of one application, in a small pool of their own:
//! each connection carries state that sqlx's pool has no place for. An
//! authorizer keeps plugin SQL inside the application's own file (no
//! ATTACH, DETACH, VACUUM, extensions, or PRAGMAs outside a read-only
//! list), and a progress handler stops a statement at its request's
//! deadline instead of letting it run on after the caller gave up.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use libsqlite3_sys as ffi;
use sqlx::ConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::SqlError;

/// PRAGMAs a plugin may run with any argument: they only read the schema
/// or check the file.
const PRAGMAS_READING: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
];

/// PRAGMAs a plugin may read but not set (no argument, no `= value`).
const PRAGMAS_READ_ONLY: &[&str] = &[
    "user_version",
    "schema_version",
    "data_version",
    "page_count",
    "page_size",
    "freelist_count",
    "application_id",
];

/// Virtual machine steps between two looks at the deadline: small enough
/// to stop within a fraction of a millisecond, large enough to cost
/// nothing measurable.
const PROGRESS_STEPS: i32 = 1_000;

/// Milliseconds since the first call, for deadlines in an atomic.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    Instant::now().duration_since(epoch).as_millis() as u64 + 1
}

fn as_ms(deadline: Instant) -> u64 {
    let now = Instant::now();
    let left = deadline.saturating_duration_since(now).as_millis() as u64;
    now_ms() + left
}

/// Decides, for each thing a statement is about to do, whether plugin SQL
/// may do it.
extern "C" fn authorize(
    _: *mut c_void,
    action: c_int,
    first: *const c_char,
    second: *const c_char,
    _: *const c_char,
    _: *const c_char,
) -> c_int {
    let text = |p: *const c_char| {
        // SAFETY: SQLite passes NULL or a NUL-terminated string that lives
        // for the duration of the callback.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy())
    };
    let allowed = match action {
        // VACUUM, and VACUUM INTO a path, attach a database too.
        ffi::SQLITE_ATTACH | ffi::SQLITE_DETACH => false,
        ffi::SQLITE_PRAGMA => {
            let name = text(first).unwrap_or_default().to_ascii_lowercase();
            PRAGMAS_READING.contains(&name.as_str())
                || (PRAGMAS_READ_ONLY.contains(&name.as_str()) && second.is_null())
        }
        ffi::SQLITE_FUNCTION => {
            let name = text(second).unwrap_or_default().to_ascii_lowercase();
            name != "load_extension"
        }
        _ => true,
    };
    if allowed {
        ffi::SQLITE_OK
    } else {
        ffi::SQLITE_DENY
    }
}

/// Locks a fresh connection down: the authorizer, no attached databases at
/// all, no extension loading, and defensive mode (no writes to the schema
/// table and the like).
async fn lock_down(conn: &mut SqliteConnection, deadline: Arc<AtomicU64>) -> Result<(), SqlError> {
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    // SAFETY: `db` is this connection's open handle, locked away from its
    // worker thread while `handle` lives; the calls only set options.
    unsafe {
        ffi::sqlite3_limit(db, ffi::SQLITE_LIMIT_ATTACHED, 0);
        ffi::sqlite3_db_config(
            db,
            ffi::SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION,
            0 as c_int,
            std::ptr::null_mut::<c_int>(),
        );
        ffi::sqlite3_db_config(
            db,
            ffi::SQLITE_DBCONFIG_DEFENSIVE,
            1 as c_int,
            std::ptr::null_mut::<c_int>(),
        );
        let set = ffi::sqlite3_set_authorizer(db, Some(authorize), std::ptr::null_mut());
        if set != ffi::SQLITE_OK {
            return Err(SqlError::Unavailable(
                "cannot install the SQLite authorizer".into(),
            ));
        }
    }
    handle.set_progress_handler(PROGRESS_STEPS, move || {
        let at = deadline.load(Ordering::Relaxed);
        at == 0 || now_ms() <= at
    });
    Ok(())
}

/// One connection and the deadline its progress handler checks.
struct Pooled {
    conn: SqliteConnection,
    /// Milliseconds (see [`now_ms`]) past which the running statement is
    /// interrupted; 0 when no statement runs.
    deadline: Arc<AtomicU64>,
}

struct Shared {
    options: SqliteConnectOptions,
    idle: Mutex<Vec<Pooled>>,
    permits: Arc<Semaphore>,
    acquire_timeout: Duration,
    open: AtomicUsize,
}

/// The pool of one application's SQLite file.
#[derive(Clone)]
pub struct LitePool(Arc<Shared>);

impl LitePool {
    /// A pool of at most `max` connections made with `options`, each on
    /// first use.
    pub fn new(options: SqliteConnectOptions, max: u32, acquire_timeout: Duration) -> LitePool {
        LitePool(Arc::new(Shared {
            options,
            idle: Mutex::default(),
            permits: Arc::new(Semaphore::new(max as usize)),
            acquire_timeout,
            open: AtomicUsize::new(0),
        }))
    }

    /// A connection: an idle one, or a new one while fewer than the
    /// maximum are open; waits at most the acquire timeout for a free one.
    pub async fn acquire(&self) -> Result<LiteConn, SqlError> {
        let shared = &self.0;
        let permit = tokio::time::timeout(
            shared.acquire_timeout,
            shared.permits.clone().acquire_owned(),
        )
        .await
        .map_err(|_| SqlError::Unavailable("no database connection became free in time".into()))?
        .expect("the pool's semaphore is never closed");
        let idle = shared.idle.lock().expect("sqlite pool lock").pop();
        let pooled = match idle {
            Some(pooled) => pooled,
            None => {
                let mut conn = shared.options.connect().await?;
                let deadline = Arc::new(AtomicU64::new(0));
                lock_down(&mut conn, deadline.clone()).await?;
                shared.open.fetch_add(1, Ordering::Relaxed);
                Pooled { conn, deadline }
            }
        };
        Ok(LiteConn {
            pooled: Some(pooled),
            pool: self.clone(),
            _permit: permit,
            discard: false,
        })
    }

    /// Connections open and idle, for status.
    pub fn size(&self) -> (u32, usize) {
        let idle = self.0.idle.lock().expect("sqlite pool lock").len();
        (self.0.open.load(Ordering::Relaxed) as u32, idle)
    }
}

/// A connection checked out of a [`LitePool`]; back in the pool when
/// dropped, unless it was discarded.
pub struct LiteConn {
    pooled: Option<Pooled>,
    pool: LitePool,
    _permit: OwnedSemaphorePermit,
    discard: bool,
}

impl LiteConn {
    /// The deadline the next statements run under: one still running at
    /// it is interrupted within a fraction of a millisecond.
    pub fn set_deadline(&self, deadline: Option<Instant>) {
        if let Some(pooled) = &self.pooled {
            pooled
                .deadline
                .store(deadline.map_or(0, as_ms), Ordering::Relaxed);
        }
    }

    /// Closes the connection instead of returning it to the pool.
    pub fn discard(&mut self) {
        self.discard = true;
    }
}

impl Deref for LiteConn {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.pooled.as_ref().expect("checked out").conn
    }
}

impl DerefMut for LiteConn {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.pooled.as_mut().expect("checked out").conn
    }
}

impl Drop for LiteConn {
    fn drop(&mut self) {
        let Some(pooled) = self.pooled.take() else {
            return;
        };
        if self.discard {
            // A statement may still be running on it (its caller gave up
            // at the deadline): make sure it is interrupted, whatever the
            // time, rather than let it run on in the worker thread.
            pooled.deadline.store(1, Ordering::Relaxed);
            self.pool.0.open.fetch_sub(1, Ordering::Relaxed);
            // Dropping the connection closes it (its worker thread ends once
            // the interrupted statement has).
            drop(pooled);
        } else {
            pooled.deadline.store(0, Ordering::Relaxed);
            self.pool
                .0
                .idle
                .lock()
                .expect("sqlite pool lock")
                .push(pooled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn allows(action: c_int, first: Option<&str>, second: Option<&str>) -> bool {
        let c = |s: Option<&str>| s.map(|s| CString::new(s).unwrap());
        let (a, b) = (c(first), c(second));
        let p = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
        authorize(
            std::ptr::null_mut(),
            action,
            p(&a),
            p(&b),
            std::ptr::null(),
            std::ptr::null(),
        ) == ffi::SQLITE_OK
    }

    #[test]
    fn the_authorizer_refuses_what_reaches_past_the_file() {
        assert!(!allows(ffi::SQLITE_ATTACH, Some("/etc/passwd"), None));
        assert!(!allows(ffi::SQLITE_DETACH, Some("main"), None));
        assert!(!allows(
            ffi::SQLITE_PRAGMA,
            Some("journal_mode"),
            Some("delete")
        ));
        assert!(!allows(ffi::SQLITE_PRAGMA, Some("user_version"), Some("7")));
        assert!(!allows(ffi::SQLITE_FUNCTION, None, Some("load_extension")));
        assert!(allows(ffi::SQLITE_PRAGMA, Some("user_version"), None));
        assert!(allows(
            ffi::SQLITE_PRAGMA,
            Some("TABLE_INFO"),
            Some("todos")
        ));
        assert!(allows(ffi::SQLITE_FUNCTION, None, Some("count")));
        assert!(allows(ffi::SQLITE_SELECT, None, None));
    }
}
