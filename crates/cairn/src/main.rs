//! The `cairn` binary: parse the command line, run, print errors as a chain.

fn main() {
    std::process::exit(cairn::cli::main());
}
