//! The `asterflow` binary: parse the command line, run, render the error, exit with its code.

fn main() {
    std::process::exit(asterflow::cli::main(std::env::args_os()));
}
