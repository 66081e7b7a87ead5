fn main() {
    // Die quietly when the reader of our output goes away (`ftexp plan … | head`), as Unix tools do.
    // SAFETY: resetting a signal disposition at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    std::process::exit(ftexp::cli::main());
}
