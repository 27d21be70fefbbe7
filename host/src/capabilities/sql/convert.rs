//! WIT values to the database's plain values and back. The two enums have
//! the same shape, so each conversion is a move per value.

use crate::capabilities::bindings::{SqlExecuted, SqlRows, SqlValue};
use crate::resources::database::{Executed, Rows, Value};

/// A statement's parameters, as the database binds them.
pub fn values(params: Vec<SqlValue>) -> Vec<Value> {
    params.into_iter().map(value).collect()
}

fn value(v: SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Boolean(b) => Value::Boolean(b),
        SqlValue::Int(i) => Value::Int(i),
        SqlValue::Float(f) => Value::Float(f),
        SqlValue::Text(t) => Value::Text(t),
        SqlValue::Blob(b) => Value::Blob(b),
    }
}

fn wit_value(v: Value) -> SqlValue {
    match v {
        Value::Null => SqlValue::Null,
        Value::Boolean(b) => SqlValue::Boolean(b),
        Value::Int(i) => SqlValue::Int(i),
        Value::Float(f) => SqlValue::Float(f),
        Value::Text(t) => SqlValue::Text(t),
        Value::Blob(b) => SqlValue::Blob(b),
    }
}

/// A query's answer, as the plugin reads it.
pub fn rows(rows: Rows) -> SqlRows {
    SqlRows {
        columns: rows.columns,
        rows: rows
            .rows
            .into_iter()
            .map(|row| row.into_iter().map(wit_value).collect())
            .collect(),
    }
}

pub fn executed(done: Executed) -> SqlExecuted {
    SqlExecuted {
        rows_affected: done.rows_affected,
        last_insert_id: done.last_insert_id,
    }
}
