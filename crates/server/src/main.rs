fn main() -> std::process::ExitCode {
    broadcast_server::cli::main()
}
