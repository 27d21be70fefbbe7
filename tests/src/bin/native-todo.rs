//! The todo benchmark's baseline: a native Rust server speaking Ferry's
//! framed JSON protocol that answers `todo.get` with the same query, on the
//! same kind of sqlx pool, as `plugins/todo` does through Ferry.
//! Usage: `native-todo SOCKET_PATH DATABASE_URL`.

use std::str::FromStr;
use std::sync::Arc;

use ferry_tests::baseline::{json_frame, serve_frames};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::Row;

/// Ferry's default pool size, so both sides have as many connections.
const POOL: u32 = 10;

#[derive(Deserialize)]
struct Request {
    id: Value,
    action: String,
    params: ById,
    tenant_id: String,
}

#[derive(Deserialize)]
struct ById {
    id: String,
}

#[derive(Serialize)]
struct Item {
    id: String,
    title: String,
    done: bool,
}

enum Pool {
    Sqlite(sqlx::SqlitePool),
    MySql(sqlx::MySqlPool),
    Postgres(sqlx::PgPool),
}

const SELECT: &str = "SELECT id, title, done FROM todo_items WHERE id = ? AND tenant = ?";

impl Pool {
    fn open(url: &str) -> Pool {
        if url.starts_with("sqlite:") {
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                .unwrap()
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
            Pool::Sqlite(
                sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(POOL)
                    .connect_lazy_with(options),
            )
        } else if url.starts_with("mysql:") {
            Pool::MySql(
                sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(POOL)
                    .connect_lazy(url)
                    .unwrap(),
            )
        } else {
            Pool::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(POOL)
                    .connect_lazy(url)
                    .unwrap(),
            )
        }
    }

    async fn get(&self, id: &str, tenant: &str) -> Result<Option<Item>, sqlx::Error> {
        macro_rules! fetch {
            ($pool:expr, $sql:expr) => {
                sqlx::query($sql)
                    .bind(id)
                    .bind(tenant)
                    .fetch_optional($pool)
                    .await?
                    .map(|row| Item {
                        id: row.get("id"),
                        title: row.get("title"),
                        done: row.get("done"),
                    })
            };
        }
        Ok(match self {
            Pool::Sqlite(pool) => fetch!(pool, SELECT),
            Pool::MySql(pool) => fetch!(pool, SELECT),
            Pool::Postgres(pool) => fetch!(
                pool,
                "SELECT id, title, done FROM todo_items WHERE id = $1 AND tenant = $2"
            ),
        })
    }
}

async fn handle(pool: &Pool, frame: &[u8]) -> Vec<u8> {
    let request: Request = serde_json::from_slice(frame).expect("benchmark sends valid requests");
    assert_eq!(request.action, "get");
    let answer = match pool.get(&request.params.id, &request.tenant_id).await {
        Ok(Some(item)) => json!({"id": request.id, "status": "success", "result": item}),
        Ok(None) => {
            json!({"id": request.id, "status": "error", "error": {"code": "not_found", "message": "no such item"}})
        }
        Err(e) => {
            json!({"id": request.id, "status": "error", "error": {"code": "unavailable", "message": e.to_string()}})
        }
    };
    json_frame(&answer)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(url)) = (args.next(), args.next()) else {
        panic!("usage: native-todo SOCKET_PATH DATABASE_URL");
    };
    let pool = Arc::new(Pool::open(&url));
    serve_frames(path.as_ref(), true, move |frame: Vec<u8>| {
        let pool = pool.clone();
        async move { handle(&pool, &frame).await }
    })
    .await;
}
