/// mimalloc rather than glibc's malloc: the delivery worker allocates on the runtime's threads
/// and frees on SQLite's (and back), where glibc's arena locks were contended.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    broadcast_server::cli::main()
}
