//! The `tokenrelay` binary: parse the command line, hand over to [`tokenrelay::cli`].

/// mimalloc: every request allocates and frees small buffers (headers, form, JSON) across
/// tasks; see BENCHMARKS.md for what it saves against glibc's allocator.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tokenrelay::cli::main()
}
