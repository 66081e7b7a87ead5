//! The `ftexp` command line: parses the arguments and runs one command from `cli/`.
mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Die quietly when the reader of our output goes away (`ftexp plan … | head`), as Unix tools do.
    // SAFETY: resetting a signal disposition at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    cli::main()
}
