fn main() {
    msdiff::runtime::choose_openmp_wait_policy();
    std::process::exit(msdiff::cli::main());
}
