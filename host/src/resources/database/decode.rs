//! Column values read back into plain values, per engine: dates and times
//! as text, decimals digit for digit.

use sqlx::{Column, Row, TypeInfo, ValueRef};

use super::{SqlError, Value};

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

pub(super) fn decode_sqlite(row: &sqlx::sqlite::SqliteRow, i: usize) -> Result<Value, SqlError> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let declared = row.column(i).type_info().name().to_ascii_uppercase();
    let stored = raw.type_info().name().to_owned();
    Ok(match stored.as_str() {
        "INTEGER" | "BOOLEAN" if declared == "BOOLEAN" => Value::Boolean(get!(row, i, i64) != 0),
        "INTEGER" | "BOOLEAN" | "INT8" => Value::Int(get!(row, i, i64)),
        "REAL" | "NUMERIC" => Value::Float(get!(row, i, f64)),
        "BLOB" => Value::Blob(get!(row, i, Vec<u8>)),
        _ => Value::Text(get!(row, i, String)),
    })
}

pub(super) fn decode_mysql(row: &sqlx::mysql::MySqlRow, i: usize) -> Result<Value, SqlError> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let column = row.column(i);
    let name = column.type_info().name();
    Ok(match name {
        "BOOLEAN" => Value::Boolean(get!(row, i, bool)),
        "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" => Value::Int(get!(row, i, i64)),
        "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "MEDIUMINT UNSIGNED" | "INT UNSIGNED"
        | "BIGINT UNSIGNED" | "YEAR" | "BIT" => {
            let n = get!(row, i, u64);
            i64::try_from(n).map_or_else(|_| Value::Text(n.to_string()), Value::Int)
        }
        "FLOAT" => Value::Float(f64::from(get!(row, i, f32))),
        "DOUBLE" => Value::Float(get!(row, i, f64)),
        // Sent as text by the server: passed on digit for digit.
        "DECIMAL" => Value::Text(row.try_get_unchecked::<String, _>(i)?),
        "DATE" => Value::Text(date(get!(row, i, time::Date))),
        "TIME" => Value::Text(clock(get!(row, i, time::Time))),
        "DATETIME" => Value::Text(timestamp(get!(row, i, time::PrimitiveDateTime))),
        "TIMESTAMP" => Value::Text(timestamp_utc(get!(row, i, time::OffsetDateTime))),
        "BLOB" | "TINYBLOB" | "MEDIUMBLOB" | "LONGBLOB" | "BINARY" | "VARBINARY" => {
            Value::Blob(get!(row, i, Vec<u8>))
        }
        "VARCHAR" | "CHAR" | "TEXT" | "TINYTEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM" | "SET"
        | "JSON" => Value::Text(get!(row, i, String)),
        other => return Err(unsupported(column.name(), other)),
    })
}

pub(super) fn decode_pg(row: &sqlx::postgres::PgRow, i: usize) -> Result<Value, SqlError> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let column = row.column(i);
    let name = column.type_info().name();
    Ok(match name {
        "BOOL" => Value::Boolean(get!(row, i, bool)),
        "INT2" => Value::Int(i64::from(get!(row, i, i16))),
        "INT4" => Value::Int(i64::from(get!(row, i, i32))),
        "INT8" => Value::Int(get!(row, i, i64)),
        "OID" => Value::Int(i64::from(get!(row, i, sqlx::postgres::types::Oid).0)),
        "FLOAT4" => Value::Float(f64::from(get!(row, i, f32))),
        "FLOAT8" => Value::Float(get!(row, i, f64)),
        "NUMERIC" => match raw.format() {
            sqlx::postgres::PgValueFormat::Text => Value::Text(get!(row, i, String)),
            sqlx::postgres::PgValueFormat::Binary => Value::Text(
                pg_numeric(raw.as_bytes().map_err(sqlx::Error::Decode)?).ok_or_else(|| {
                    SqlError::Refused(format!("column `{}`: malformed NUMERIC", column.name()))
                })?,
            ),
        },
        "DATE" => Value::Text(date(get!(row, i, time::Date))),
        "TIME" => Value::Text(clock(get!(row, i, time::Time))),
        "TIMESTAMP" => Value::Text(timestamp(get!(row, i, time::PrimitiveDateTime))),
        "TIMESTAMPTZ" => Value::Text(timestamp_utc(get!(row, i, time::OffsetDateTime))),
        "BYTEA" => Value::Blob(get!(row, i, Vec<u8>)),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" | "UNKNOWN" => {
            Value::Text(get!(row, i, String))
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
}
