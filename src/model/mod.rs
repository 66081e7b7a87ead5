//! The model: one GPT with switches per family, built from a hub checkpoint.
pub mod spec;
