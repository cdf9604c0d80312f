use heartbeat_wire::config_file::WithConfigFile;
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
    raise_open_file_limit();
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
    // Connection threads may be stuck on a hung disk or a lock wait; do not
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

/// Each connection holds three descriptors (its socket and its runtime's
/// epoll and wake-up descriptors): raise the soft limit to the hard one so
/// that `--max-connections` is what limits connections, not a default soft
/// limit of 1024.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit; connections may be refused early");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}
