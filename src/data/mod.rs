//! Data sets: Alpaca-format records in, prepared splits out.
mod records;

pub use records::{count_records, read_records, Record};
