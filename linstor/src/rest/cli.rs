//! Command-line entry: `provision` and `urls`, as a library function so the
//! `xha-shim` binary can mount [`Command`] as its `linstor` subcommand; the
//! `heartbeat-linstor` binary calls [`run`].
//!
//! Exit codes: 0 done (created or unchanged), 1 LINSTOR or connection error,
//! 2 usage error, 3 provisioned objects exist but differ from the request.

use std::ffi::OsString;
use std::io::Write;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use super::client::Client;
use super::provision::{
    provision, HeartbeatVolumeSpec, PromotionMode, DEFAULT_PLACE_COUNT, DEFAULT_RESOURCE_GROUP,
    XCP_NG_AUTO_PROMOTE_TIMEOUT,
};
use super::urls::{replica_hosts, url_list, HostSelection};

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_DIFFERS: i32 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "heartbeat-linstor",
    version,
    about = "LINSTOR side of the XHA heartbeat volumes: provision them, list their URLs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create (or check) the heartbeat resource group, volume group, resource
    /// definition and replicas for one volume. Safe to run again.
    Provision(ProvisionArgs),
    /// Print the comma-separated `http://<addr>:<port>` list of the hosts
    /// holding a replica of the volume (for `nbd-http-server --urls`).
    Urls(UrlsArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ControllerArgs {
    /// LINSTOR controller(s): `host`, `host:port` or `http://host:port`,
    /// comma-separated; the first that answers is used.
    #[arg(long, env = "LS_CONTROLLERS", default_value = "http://localhost:3370")]
    pub controller: String,
    /// Timeout of each REST call in seconds (placement waits for satellites).
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

impl ControllerArgs {
    fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(
            &self.controller,
            Duration::from_secs(self.timeout.max(1)),
        )?)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum YesNo {
    Yes,
    No,
}

#[derive(Debug, Clone, Args)]
pub struct ProvisionArgs {
    #[command(flatten)]
    pub controller: ControllerArgs,
    /// Resource definition name, e.g. xcp-persistent-ha-statefile.
    #[arg(long)]
    pub volume: String,
    /// Volume size: bytes, or with a unit K/KiB, M/MiB, G/GiB (powers of 1024),
    /// e.g. 4MiB for the statefile, 256MiB for the redo log.
    #[arg(long, value_parser = parse_size)]
    pub size: u64,
    #[arg(long, default_value = DEFAULT_RESOURCE_GROUP)]
    pub resource_group: String,
    /// Diskful replicas. With an even count LINSTOR adds a diskless
    /// tie-breaker so quorum still has a majority.
    #[arg(long, default_value_t = DEFAULT_PLACE_COUNT, value_parser = clap::value_parser!(i32).range(1..=16))]
    pub place_count: i32,
    /// Storage pool for the diskful replicas (default: LINSTOR's choice).
    #[arg(long)]
    pub storage_pool: Option<String>,
    /// `no`: http-disk-server promotes explicitly (`--arbiter drbd`);
    /// `yes`: promotion by opening the device, as XCP-ng's reference server.
    #[arg(long, value_enum, default_value_t = YesNo::No)]
    pub auto_promote: YesNo,
    /// With `--auto-promote yes`: how long an open may wait to promote, in
    /// tenths of a second (XCP-ng sets 600).
    #[arg(long, default_value_t = XCP_NG_AUTO_PROMOTE_TIMEOUT, value_parser = clap::value_parser!(u32).range(0..=600))]
    pub auto_promote_timeout: u32,
}

impl ProvisionArgs {
    pub fn spec(&self) -> anyhow::Result<HeartbeatVolumeSpec> {
        if self.size & 0x3FF != 0 {
            anyhow::bail!(
                "--size {} is not a whole number of KiB (LINSTOR sizes volumes in KiB)",
                self.size
            );
        }
        let mut spec = HeartbeatVolumeSpec::new(&self.volume, self.size);
        spec.resource_group = self.resource_group.clone();
        spec.place_count = self.place_count;
        spec.storage_pool = self.storage_pool.clone();
        spec.promotion = match self.auto_promote {
            YesNo::No => PromotionMode::Explicit,
            YesNo::Yes => PromotionMode::OpenToPromote {
                timeout_deciseconds: self.auto_promote_timeout,
            },
        };
        Ok(spec)
    }
}

#[derive(Debug, Clone, Args)]
pub struct UrlsArgs {
    #[command(flatten)]
    pub controller: ControllerArgs,
    #[arg(long)]
    pub volume: String,
    /// http-disk-server port (XCP-ng: 8076 statefile, 8077 redo log).
    #[arg(long)]
    pub port: u16,
    /// Net interface whose address to use (default: the satellite's active one).
    #[arg(long)]
    pub net_interface: Option<String>,
    /// Also list diskless tie-breaker replicas.
    #[arg(long)]
    pub include_tie_breakers: bool,
    /// Only list diskful replicas.
    #[arg(long, conflicts_with = "include_tie_breakers")]
    pub diskful_only: bool,
}

/// Parses `4194304`, `4096K`, `4KiB`, `4M`, `4MiB`, `1G`, `1GiB`, `512B`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 4MiB, 268435456)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{s}` (use K, M, G)"
            ))
        }
    };
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("size `{s}` is zero or too large"))
}

/// Parse `args` (program name first) and run; output to stdout/stderr.
pub fn run<I, T>(args: I) -> anyhow::Result<i32>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    run_with_output(args, &mut std::io::stdout(), &mut std::io::stderr())
}

/// [`run`] with explicit output streams (for tests and embedding).
pub fn run_with_output<I, T>(
    args: I,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<i32>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(cli) => execute(&cli.command, out, err),
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            if e.use_stderr() {
                write!(err, "{}", e.render())?;
            } else {
                write!(out, "{}", e.render())?;
            }
            Ok(code)
        }
    }
}

/// Run one parsed command. LINSTOR errors are printed to `err` with
/// LINSTOR's message, cause and correction, and give [`EXIT_FAILED`].
pub fn execute(cmd: &Command, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<i32> {
    let result = match cmd {
        Command::Provision(a) => provision_cmd(a, out),
        Command::Urls(a) => urls_cmd(a, out),
    };
    match result {
        Ok(code) => Ok(code),
        Err(e) => {
            writeln!(err, "error: {e:#}")?;
            Ok(EXIT_FAILED)
        }
    }
}

fn provision_cmd(a: &ProvisionArgs, out: &mut dyn Write) -> anyhow::Result<i32> {
    let spec = a.spec()?;
    let client = a.controller.client()?;
    writeln!(
        out,
        "provisioning {} ({} KiB, {} diskful, auto-promote {}) via {}",
        spec.volume,
        spec.size_kib,
        spec.place_count,
        match spec.promotion {
            PromotionMode::Explicit => "no",
            PromotionMode::OpenToPromote { .. } => "yes",
        },
        client.base()
    )?;
    let report = provision(&client, &spec)?;
    for step in &report.steps {
        writeln!(out, "{step}")?;
    }
    let replicas: Vec<String> = report
        .replicas
        .iter()
        .map(|r| {
            let kind = if r.tie_breaker {
                " (tie-breaker)"
            } else if r.diskless {
                " (diskless)"
            } else {
                ""
            };
            format!("{}{kind}", r.node)
        })
        .collect();
    writeln!(out, "replicas: {}", replicas.join(", "))?;
    writeln!(
        out,
        "device: /dev/drbd/by-res/{}/0; nbd-http-server --device-size {}",
        spec.volume,
        spec.size_kib * 1024
    )?;
    if report.has_differences() {
        writeln!(
            out,
            "existing objects differ from the request (see above); they were left as they are: \
             fix them with `linstor resource-group set-property` / `linstor resource-definition \
             set-property`, or choose another --resource-group"
        )?;
        return Ok(EXIT_DIFFERS);
    }
    Ok(EXIT_OK)
}

fn urls_cmd(a: &UrlsArgs, out: &mut dyn Write) -> anyhow::Result<i32> {
    let client = a.controller.client()?;
    let sel = HostSelection {
        net_interface: a.net_interface.clone(),
        include_tie_breakers: a.include_tie_breakers,
        diskful_only: a.diskful_only,
    };
    let hosts = replica_hosts(&client, &a.volume, &sel)?;
    writeln!(out, "{}", url_list(&hosts, a.port))?;
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("4194304"), Ok(4 << 20));
        assert_eq!(parse_size("4096K"), Ok(4 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("4TB").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("MiB").is_err());
    }

    #[test]
    fn cli_parses() {
        Cli::try_parse_from([
            "x",
            "provision",
            "--controller",
            "c",
            "--volume",
            "v",
            "--size",
            "4MiB",
            "--auto-promote",
            "yes",
        ])
        .unwrap();
        assert!(Cli::try_parse_from(["x", "urls", "--volume", "v"]).is_err());
    }
}
