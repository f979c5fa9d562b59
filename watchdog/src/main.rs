fn main() -> std::process::ExitCode {
    watchdog::cli::main()
}
