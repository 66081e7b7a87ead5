//! Alpaca-format records (`instruction`, optional `input`, `output`) from a data set's rows, with
//! errors that name the file and the record.
use std::path::PathBuf;

use serde_json::Value;

use super::files::{kind, read_rows, Needed, Row};
use crate::config::schema::Columns;
use crate::error::Problems;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub instruction: String,
    pub input: String,
    pub output: String,
}

/// The records of `files`, in order, fields read from the `columns` names.
pub fn read_records(files: &[PathBuf], columns: &Columns) -> Result<Vec<Record>, Problems> {
    let needed = [
        Needed { column: &columns.instruction, key: "data.columns.instruction" },
        Needed { column: &columns.output, key: "data.columns.output" },
    ];
    read_rows(files, &needed)?
        .into_iter()
        .map(|Row { value, at }| to_record(value, columns).map_err(|msg| Problems::one(format!("{at}: {msg}"))))
        .collect()
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
