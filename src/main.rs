fn main() {
    std::process::exit(ftexp::cli::main());
}
