//! Reading Alpaca-format records (`instruction`, optional `input`, `output`) from a JSON array or a
//! JSON Lines file, with errors that name the file and the record.
use std::path::Path;

use serde_json::Value;

use crate::config::schema::Columns;
use crate::error::Problems;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub instruction: String,
    pub input: String,
    pub output: String,
}

/// The records of `path`, in file order, fields read from the `columns` names.
pub fn read_records(path: &Path, columns: &Columns) -> Result<Vec<Record>, Problems> {
    let name = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| {
        Problems::one(match e.kind() {
            std::io::ErrorKind::NotFound => format!("{name}: data file not found; check `data.path`"),
            _ => format!("{name}: cannot read: {e}"),
        })
    })?;
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(Problems::one(format!(
            "{name}: the file is empty; it must hold a JSON array of records or one JSON record per line"
        )));
    }
    let rows: Vec<(Value, String)> = if trimmed.starts_with('[') {
        let items: Vec<Value> = serde_json::from_str(&text).map_err(|e| {
            Problems::one(format!("{name}:{}:{}: invalid JSON: {}", e.line(), e.column(), strip_position(&e)))
        })?;
        items.into_iter().enumerate().map(|(i, v)| (v, format!("record {}", i + 1))).collect()
    } else {
        let mut rows = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(line).map_err(|e| {
                Problems::one(format!("{name}:{}:{}: invalid JSON: {}", i + 1, e.column(), strip_position(&e)))
            })?;
            rows.push((value, format!("record {} (line {})", rows.len() + 1, i + 1)));
        }
        rows
    };
    rows.into_iter()
        .map(|(value, at)| to_record(value, columns).map_err(|msg| Problems::one(format!("{name}: {at}: {msg}"))))
        .collect()
}

/// How many records `path` holds.
pub fn count_records(path: &Path, columns: &Columns) -> Result<usize, Problems> {
    read_records(path, columns).map(|r| r.len())
}

fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn to_record(value: Value, columns: &Columns) -> Result<Record, String> {
    let Value::Object(map) = value else {
        return Err(format!(
            "expected an object with `{}` and `{}`, found {}",
            columns.instruction,
            columns.output,
            kind(&value)
        ));
    };
    let field = |key: &str, required: bool| -> Result<String, String> {
        match map.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            None | Some(Value::Null) if !required => Ok(String::new()),
            None | Some(Value::Null) => Err(format!(
                "missing `{key}`; every record needs `{}` and `{}` (`{}` is optional; `data.columns` maps other field names)",
                columns.instruction, columns.output, columns.input
            )),
            Some(other) => Err(format!("`{key}` must be a string, found {}", kind(other))),
        }
    };
    Ok(Record {
        instruction: field(&columns.instruction, true)?,
        input: field(&columns.input, false)?,
        output: field(&columns.output, true)?,
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
