//! The application's database, for plugins whose manifest grants it
//! (`permissions: {database: true}`).
//!
//! ```ignore
//! use ferry_sdk::{sql, params};
//!
//! #[derive(serde::Deserialize)]
//! struct Item { id: String, title: String, done: bool }
//!
//! let items: Vec<Item> = sql::query(
//!     "SELECT id, title, done FROM items WHERE tenant = ? ORDER BY id",
//!     params![tenant],
//! )?;
//! ```
//!
//! Write `?` for each parameter on every engine; values are always bound,
//! never spliced into the text. Rows come back as serde structs whose field
//! names are the column names. Errors are [`Error`]s with the host's codes
//! (`bad_request` when the database refuses a statement, `timeout`,
//! `unavailable`, `forbidden` without the grant), so `?` passes them on to
//! the caller unchanged.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value as Json};

use crate::__bindings::ferry::plugin::sql as wit;
use crate::Error;

pub use wit::{Executed, Rows, Value};

impl From<crate::__bindings::ferry::plugin::types::Error> for Error {
    fn from(e: crate::__bindings::ferry::plugin::types::Error) -> Self {
        Error::new(e.code, e.message)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Boolean(v)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(v.into())
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// Builds a parameter list: `params![tenant, 42, Some("x")]`.
#[macro_export]
macro_rules! params {
    ($($value:expr),* $(,)?) => {
        &[$($crate::sql::Value::from($value)),*]
    };
}

fn to_json(value: Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(b),
        Value::Int(i) => Json::from(i),
        Value::Float(f) => Json::from(f),
        Value::Text(t) => Json::String(t),
        Value::Blob(b) => Json::Array(b.into_iter().map(Json::from).collect()),
    }
}

/// Turns rows into `T`s, one per row, by column name.
pub fn decode<T: DeserializeOwned>(rows: Rows) -> Result<Vec<T>, Error> {
    let Rows { columns, rows } = rows;
    rows.into_iter()
        .map(|row| {
            let object: Map<String, Json> = columns
                .iter()
                .cloned()
                .zip(row.into_iter().map(to_json))
                .collect();
            serde_json::from_value(Json::Object(object))
                .map_err(|e| Error::internal(format!("a row does not fit the expected type: {e}")))
        })
        .collect()
}

/// Runs a query and decodes every row into `T`.
pub fn query<T: DeserializeOwned>(statement: &str, params: &[Value]) -> Result<Vec<T>, Error> {
    decode(query_rows(statement, params)?)
}

/// Runs a query and answers at most one row.
pub fn query_one<T: DeserializeOwned>(
    statement: &str,
    params: &[Value],
) -> Result<Option<T>, Error> {
    Ok(query(statement, params)?.into_iter().next())
}

/// Runs a query and answers the raw rows.
pub fn query_rows(statement: &str, params: &[Value]) -> Result<Rows, Error> {
    Ok(wit::query(statement, params)?)
}

/// Runs a statement that returns no rows.
pub fn execute(statement: &str, params: &[Value]) -> Result<Executed, Error> {
    Ok(wit::execute(statement, params)?)
}

/// A transaction. Dropping it without [`Transaction::commit`] rolls it back,
/// and so does a panic or a timeout while it is open.
pub struct Transaction(wit::Transaction);

/// Starts a transaction.
pub fn begin() -> Result<Transaction, Error> {
    Ok(Transaction(wit::begin()?))
}

impl Transaction {
    pub fn query<T: DeserializeOwned>(
        &self,
        statement: &str,
        params: &[Value],
    ) -> Result<Vec<T>, Error> {
        decode(self.0.query(statement, params)?)
    }

    pub fn execute(&self, statement: &str, params: &[Value]) -> Result<Executed, Error> {
        Ok(self.0.execute(statement, params)?)
    }

    pub fn commit(self) -> Result<(), Error> {
        Ok(self.0.commit()?)
    }

    pub fn rollback(self) -> Result<(), Error> {
        Ok(self.0.rollback()?)
    }
}
