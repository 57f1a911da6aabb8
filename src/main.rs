fn main() {
    msdiff::runtime::ensure_passive_openmp_wait();
    std::process::exit(msdiff::cli::main());
}
