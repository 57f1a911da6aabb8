fn main() {
    msdiff::runtime::keep_freed_memory();
    msdiff::runtime::choose_openmp_wait_policy();
    std::process::exit(msdiff::cli::main());
}
