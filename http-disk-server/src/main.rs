use http_disk_server::{run, Args};

fn main() {
    let args = Args::parse_with_config();
    let filter = if args.verbose { "debug" } else { "info" };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("http-disk-server: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let disk = args.disk.display().to_string();
    let result = rt.block_on(run(args));
    // Blocking threads may be stuck on a hung disk or a lock wait; do not
    // wait for them.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            tracing::error!(disk = %disk, "{e:#}");
            eprintln!("http-disk-server: {disk}: {e:#}");
            std::process::exit(1);
        }
    }
}
