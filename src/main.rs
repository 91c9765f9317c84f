//! The `logveil` binary: everything lives in the library; see `logveil::cli`.
fn main() -> std::process::ExitCode {
    logveil::cli::main()
}
