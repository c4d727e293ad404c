//! The `asterflow` binary: parse the command line, run, render the error, exit with its code.

fn main() {
    keep_freed_memory();
    std::process::exit(asterflow::cli::main(std::env::args_os()));
}

/// Tells glibc's allocator to keep memory it has been given: blocks under 32 MiB come from its
/// heaps rather than fresh maps of their own, and freed memory is not handed back to the
/// kernel while the process runs. A query's operators allocate and free their batches over
/// and over; by default each large batch was a new map whose pages the kernel faulted in and
/// zeroed again, and the features stage spent 0.7 to 0.9 s of its CPU in the kernel (0.5 s
/// this way, 0.2 s less wall time, about 20 MiB more peak memory). `GLIBC_TUNABLES`, where
/// set, is left to decide.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        // SAFETY: mallopt only sets the allocator's parameters, before any thread is started.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_TOP_PAD, 256 << 20);
        }
    }
}
