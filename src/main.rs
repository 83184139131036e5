//! The `conquer` binary: parse the command line, run the chosen role, map the outcome to an
//! exit status (0 success, 1 failure, 2 usage, 3 a worker with
//! `--exit-when-done` that heard of no batch, 130 interrupted by Ctrl-C, 143 by SIGTERM).

fn main() {
    conquer::shutdown::exit(conquer::cli::main());
}
