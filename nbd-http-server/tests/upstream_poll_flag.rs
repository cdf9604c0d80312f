//! `--upstream-poll-us`: its default, and that a `--config` file sets it like
//! any other long flag.

use clap::Parser;
use heartbeat_wire::config_file::WithConfigFile;
use nbd_http_server::daemon::Cli;

fn parse(file: Option<&str>, flags: &[&str]) -> Cli {
    let mut argv: Vec<std::ffi::OsString> =
        vec!["nbd-http-server".into(), "--nbd-name".into(), "hb".into()];
    argv.extend(["--urls".into(), "http://a:1".into()]);
    argv.extend(flags.iter().map(Into::into));
    let path = std::env::temp_dir().join(format!(
        "nbd-http-server-poll-flag-{}-{}.toml",
        std::process::id(),
        flags.len()
    ));
    if let Some(file) = file {
        std::fs::write(&path, file).unwrap();
        argv.extend(["--config".into(), path.clone().into()]);
    }
    let argv = Cli::argv_with_config(argv);
    let _ = std::fs::remove_file(&path);
    Cli::try_parse_from(argv.unwrap()).unwrap()
}

#[test]
fn upstream_poll_is_500us_by_default_and_set_by_flag_or_config_file() {
    assert_eq!(parse(None, &[]).upstream_poll_us, 500);
    assert_eq!(
        parse(None, &["--upstream-poll-us", "0"]).upstream_poll_us,
        0
    );
    assert_eq!(
        parse(Some("upstream-poll-us = 200\n"), &[]).upstream_poll_us,
        200
    );
    // The command line wins over the file.
    let cli = parse(
        Some("upstream-poll-us = 200\n"),
        &["--upstream-poll-us", "0"],
    );
    assert_eq!(cli.upstream_poll_us, 0);
    assert_eq!(
        parse(Some("upstream-poll-us = 0\n"), &[]).upstream_poll_us,
        0,
        "a config file turns the default off"
    );
}
