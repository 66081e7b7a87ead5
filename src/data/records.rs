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
    let bytes = std::fs::read(path).map_err(|e| {
        Problems::one(match e.kind() {
            std::io::ErrorKind::NotFound => format!("{name}: data file not found; check `data.path`"),
            _ => format!("{name}: cannot read: {e}"),
        })
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        Problems::one(format!("{name}:{line}: not UTF-8 text (byte {at}); save the file as UTF-8"))
    })?;
    // Some editors start UTF-8 files with a byte-order mark; JSON parsers do not expect one.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(Problems::one(format!(
            "{name}: the file is empty; it must hold a JSON array of records or one JSON record per line"
        )));
    }
    let rows: Vec<(Value, String)> = if trimmed.starts_with('[') {
        let items: Vec<Value> = serde_json::from_str(text).map_err(|e| {
            Problems::one(format!("{name}:{}:{}: invalid JSON: {}", e.line(), e.column(), strip_position(&e)))
        })?;
        items.into_iter().enumerate().map(|(i, v)| (v, format!("record {}", i + 1))).collect()
    } else {
        let mut rows = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(line).map_err(|e| match one_object(text) {
                Some(hint) => Problems::one(format!("{name}: {hint}")),
                None => Problems::one(format!("{name}:{}:{}: invalid JSON: {}", i + 1, e.column(), strip_position(&e))),
            })?;
            rows.push((value, format!("record {} (line {})", rows.len() + 1, i + 1)));
        }
        rows
    };
    rows.into_iter()
        .map(|(value, at)| to_record(value, columns).map_err(|msg| Problems::one(format!("{name}: {at}: {msg}"))))
        .collect()
}

/// What to say when the whole file is one JSON object (a pretty-printed object is not JSON Lines).
fn one_object(text: &str) -> Option<String> {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) else { return None };
    let list = map.iter().find_map(|(k, v)| Some((k, v.as_array().filter(|a| a.iter().all(Value::is_object))?.len())));
    let inner = match list {
        Some((key, n)) => format!(" (its `{key}` holds a list of {n} records: put that list at the top of the file)"),
        None => String::new(),
    };
    Some(format!(
        "holds one JSON object{inner}; ftexp reads a JSON array of records, `[{{…}}, {{…}}]`, or one record per line (JSON Lines)"
    ))
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
