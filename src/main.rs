//! The `tokenrelay` binary: parse the command line, hand over to [`tokenrelay::cli`].

fn main() -> std::process::ExitCode {
    tokenrelay::cli::main()
}
