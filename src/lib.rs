//! ftexp: fine-tune large language models from declarative TOML experiment files.
//! One module per pipeline stage; `main.rs` only calls [`cli::main`].
pub mod cli;
pub mod config;
pub mod data;
pub mod error;
pub mod experiment;
pub mod generate;
pub mod hub;
pub mod methods;
pub mod model;
pub mod plan;
pub mod report;
pub mod sweep;
pub mod train;

// Tokenizing a data set makes millions of small allocations from several threads; in a profile of
// `ftexp prepare` glibc malloc (and its lock traffic) took about 40% of the time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
