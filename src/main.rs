fn main() {
    std::process::exit(msdiff::cli::main());
}
