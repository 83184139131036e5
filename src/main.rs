//! The `conquer` binary: parse the command line, run the chosen role, map the outcome to an
//! exit status (0 success, 1 failure, 2 usage, 130 interrupted).

fn main() {
    conquer::shutdown::exit(conquer::cli::main());
}
