//! ftexp: fine-tune large language models from declarative TOML experiment files.
//!
//! One module per pipeline stage, each importing only the stages listed before it (`tests/layers.rs`
//! checks this):
//! `error` → `config` → `native` → `device` → `dist` → `experiment` → `hub` → `source` → `tokenizer` → `data` → `model` →
//! `methods` → `plan` → `generate` → `eval` → `train` → `report`, `sweep`, `export`.
//! The command line (`src/main.rs`, `src/cli/`) is the binary's, not the library's.
pub mod config;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod eval;
pub mod experiment;
pub mod export;
pub mod generate;
pub mod hub;
pub mod methods;
pub mod model;
pub mod native;
pub mod plan;
pub mod report;
pub mod source;
pub mod sweep;
pub mod tokenizer;
pub mod train;

// Tokenizing a data set makes millions of small allocations from several threads; in a profile of
// `ftexp prepare` glibc malloc (and its lock traffic) took about 40% of the time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
