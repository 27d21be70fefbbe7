//! Example plugin: todo items in the application's database, scoped by the
//! caller's tenant. The same component runs on SQLite, MariaDB/MySQL and
//! PostgreSQL: its SQL is the portable subset, with `?` placeholders.
//!
//! Its manifest must grant the database: `permissions: {database: true}`.

use std::cell::RefCell;
use std::collections::HashSet;

use ferry_sdk::{Ctx, Error, params, sql};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Item {
    id: String,
    title: String,
    done: bool,
}

const COLUMNS: &str = "id, title, done";

/// Longest title accepted; the column holds this many characters.
const MAX_TITLE: usize = 1000;

thread_local! {
    /// Applications whose table this instance has already made sure of. An
    /// instance can serve several applications, each with its own database.
    static READY: RefCell<HashSet<String>> = RefCell::new(HashSet::new());
}

/// Creates the table once per application and instance; `IF NOT EXISTS`
/// makes it safe when several instances race.
fn ready(ctx: &Ctx) -> Result<(), Error> {
    if READY.with(|r| r.borrow().contains(ctx.app())) {
        return Ok(());
    }
    sql::execute(
        "CREATE TABLE IF NOT EXISTS todo_items (
            id VARCHAR(32) NOT NULL PRIMARY KEY,
            tenant VARCHAR(128) NOT NULL,
            title VARCHAR(1000) NOT NULL,
            done BOOLEAN NOT NULL,
            created_at BIGINT NOT NULL
        )",
        &[],
    )?;
    READY.with(|r| r.borrow_mut().insert(ctx.app().to_owned()));
    Ok(())
}

/// The caller's tenant: every row belongs to one, and nobody reaches
/// another tenant's rows.
fn tenant(ctx: &Ctx) -> Result<&str, Error> {
    ctx.tenant()
        .ok_or_else(|| Error::forbidden("todo items belong to a tenant; the request has none"))
}

fn check_title(title: &str) -> Result<(), Error> {
    if title.trim().is_empty() {
        return Err(Error::bad_request("title must not be empty"));
    }
    if title.chars().count() > MAX_TITLE {
        return Err(Error::bad_request(format!(
            "title is longer than {MAX_TITLE} characters"
        )));
    }
    Ok(())
}

/// A random id: 128 bits from the host's random source, as hex.
fn new_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut id = String::with_capacity(32);
    for _ in 0..2 {
        let n = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        id.push_str(&format!("{n:016x}"));
    }
    id
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn not_found(id: &str) -> Error {
    Error::not_found(format!("no todo item `{id}`"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    title: String,
}

fn create(ctx: &Ctx, p: Create) -> Result<Item, Error> {
    let tenant = tenant(ctx)?;
    check_title(&p.title)?;
    ready(ctx)?;
    let item = Item {
        id: new_id(),
        title: p.title,
        done: false,
    };
    sql::execute(
        "INSERT INTO todo_items (id, tenant, title, done, created_at) VALUES (?, ?, ?, ?, ?)",
        params![&item.id, tenant, &item.title, false, now_micros()],
    )?;
    Ok(item)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ById {
    id: String,
}

fn get(ctx: &Ctx, p: ById) -> Result<Item, Error> {
    let tenant = tenant(ctx)?;
    ready(ctx)?;
    sql::query_one(
        &format!("SELECT {COLUMNS} FROM todo_items WHERE id = ? AND tenant = ?"),
        params![&p.id, tenant],
    )?
    .ok_or_else(|| not_found(&p.id))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Nothing {}

#[derive(Serialize)]
struct List {
    items: Vec<Item>,
}

fn list(ctx: &Ctx, _: Nothing) -> Result<List, Error> {
    let tenant = tenant(ctx)?;
    ready(ctx)?;
    let items = sql::query(
        &format!("SELECT {COLUMNS} FROM todo_items WHERE tenant = ? ORDER BY created_at, id"),
        params![tenant],
    )?;
    Ok(List { items })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Update {
    id: String,
    title: Option<String>,
    done: Option<bool>,
}

fn update(ctx: &Ctx, p: Update) -> Result<Item, Error> {
    let tenant = tenant(ctx)?;
    if let Some(title) = &p.title {
        check_title(title)?;
    }
    ready(ctx)?;
    // Read, change, read back in one transaction: the answer is the row as
    // this update left it.
    let tx = sql::begin()?;
    let select = format!("SELECT {COLUMNS} FROM todo_items WHERE id = ? AND tenant = ?");
    let Some(current) = tx
        .query::<Item>(&select, params![&p.id, tenant])?
        .into_iter()
        .next()
    else {
        return Err(not_found(&p.id));
    };
    let title = p.title.unwrap_or(current.title);
    let done = p.done.unwrap_or(current.done);
    tx.execute(
        "UPDATE todo_items SET title = ?, done = ? WHERE id = ? AND tenant = ?",
        params![&title, done, &p.id, tenant],
    )?;
    tx.commit()?;
    Ok(Item {
        id: p.id,
        title,
        done,
    })
}

#[derive(Serialize)]
struct Deleted {
    deleted: String,
}

fn delete(ctx: &Ctx, p: ById) -> Result<Deleted, Error> {
    let tenant = tenant(ctx)?;
    ready(ctx)?;
    let done = sql::execute(
        "DELETE FROM todo_items WHERE id = ? AND tenant = ?",
        params![&p.id, tenant],
    )?;
    if done.rows_affected == 0 {
        return Err(not_found(&p.id));
    }
    Ok(Deleted { deleted: p.id })
}

ferry_sdk::service!(create, get, list, update, delete);
