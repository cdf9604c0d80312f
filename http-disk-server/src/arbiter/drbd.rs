//! The `drbd` arbiter: DRBD decides who may be Primary, and only the Primary
//! serves.
//!
//! This is the I/O shell around [`linstor::promoter::Promoter`], the
//! sans-I/O election (see its module doc for the rules). The arbiter owns:
//! - the long-lived `drbdsetup events2 --full <res>` child
//!   ([`Events2Feed`]: respawned with backoff; the model is reset on every
//!   respawn and only counts once `exists -` ended the new dump);
//! - the promoter's timer ([`Promoter::next_wake`] -> [`Input::Tick`]);
//! - carrying out its actions in order, reporting results back as inputs;
//! - turning step-down requests and shutdown into inputs;
//! - the standby reason an operator reads in 503 bodies and `/v1/status`.
//!
//! **I/O stops before `secondary`.** `StopServing` publishes `Standby`; the
//! HTTP layer then stops admitting requests, drains, and closes its own
//! descriptor, asynchronously. `CloseDevice` therefore waits (bounded) until
//! no descriptor of this process refers to the device any more, by looking
//! through `/proc/self/fd`, before the promoter's next action (`secondary`)
//! runs. If a hung request keeps a descriptor open past the bound,
//! `secondary` fails ("held open") and `secondary --force` makes DRBD fail
//! that I/O; if that fails too, the arbiter escalates.
//!
//! **Promotion modes.** `explicit` (resources with `auto-promote no`):
//! `drbdsetup primary`, then a test open O_RDWR that is closed again (the
//! HTTP layer opens its own descriptor after the `Serving` grant), and
//! `drbdsetup secondary` on the way down. `auto` (`auto-promote yes`, how
//! XCP-ng configures existing statefile volumes): opening the device O_RDWR
//! *is* the promotion; the arbiter keeps that descriptor for as long as it
//! holds the role and closing it (after the HTTP layer closed its own) is
//! the demotion. EROFS/EMEDIUMTYPE on that open mean another host is Primary.
//!
//! **Escalation.** When `secondary` and `secondary --force` both fail, the
//! host may still be Primary with nobody serving: `run` returns an error, the
//! server exits non-zero, and the service manager decides (restart, or fence
//! with `FailureAction=`).
//!
//! Serving-URL hints: DRBD knows peer node names, not URLs. A standby can
//! point clients at the Primary only if `--peer-url NODE=URL` maps that name.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use linstor::drbdsetup::{self, Drbdsetup, Events2Feed, FeedItem, KernelGeneration};
use linstor::events2::{DiskState, EventKind, Line, ObjectKind, Role};
use linstor::model::{ChangeLines, ModelOptions, ResourceModel, ResourceView};
use linstor::promoter::{
    Action, ClusterView, Input, OpenOutcome, Phase, Promoter, PromoterConfig, PromotionMode,
    StepDownReason,
};
use linstor::status::ResourceStatus;

use super::{Arbiter, ArbiterContext, ArbiterFuture, Grant, StepDownCause, StepDownRequest};

/// How the resource is promoted (`--drbd-promote`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DrbdPromote {
    /// `auto-promote no`: `drbdsetup primary` / `secondary`.
    Explicit,
    /// `auto-promote yes`: opening the device read-write promotes, the last
    /// close demotes (existing XCP-ng statefile volumes).
    Auto,
}

/// Which DRBD kernel generation to drive (`--drbd-kernel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DrbdKernel {
    /// Read `/proc/drbd` at startup; DRBD 9 when it cannot be read.
    Auto,
    /// DRBD 9: state changes name the resource.
    #[value(name = "9")]
    V9,
    /// DRBD 8.4: state changes name the device minor, `events2` runs
    /// without `--full`.
    #[value(name = "8.4")]
    V84,
}

/// Everything the arbiter needs, from the command line.
#[derive(Debug, Clone)]
pub struct DrbdConfig {
    /// The DRBD resource; derived from the device path when `None`.
    pub resource: Option<String>,
    /// The `drbdsetup` binary.
    pub drbdsetup: PathBuf,
    /// Limit for one `drbdsetup primary|secondary|status` run.
    pub command_timeout: Duration,
    pub promote: DrbdPromote,
    /// See [`PromoterConfig::sleep_factor`].
    pub sleep_factor: f64,
    /// DRBD peer node name (connection name) -> that host's server URL.
    pub peer_urls: BTreeMap<String, String>,
    /// How long to wait for the HTTP layer to close its descriptors after a
    /// `Standby` grant before demoting anyway.
    pub release_timeout: Duration,
    /// Derive a missing `may_promote` (DRBD 8.4 reports none); see
    /// [`ModelOptions::derive_may_promote`]. Not split-brain safe: 8.4 has
    /// no quorum, so two partitioned nodes may both see "may promote".
    pub derive_may_promote: bool,
    /// Run `events2` without `--full` (DRBD 8.4's drbdsetup rejects it) and
    /// model its change lines as carrying only the changed keys.
    pub events2_plain: bool,
    /// DRBD 9 or 8.4 (how `primary`/`secondary` address the resource).
    pub kernel: DrbdKernel,
    /// `--debug-no-fence`: log `secondary --force` and the escalation exit
    /// instead of doing them (the election then stays escalated: standby).
    pub debug_no_fence: bool,
}

impl Default for DrbdConfig {
    fn default() -> Self {
        DrbdConfig {
            resource: None,
            drbdsetup: PathBuf::from("drbdsetup"),
            command_timeout: Duration::from_secs(10),
            promote: DrbdPromote::Explicit,
            sleep_factor: PromoterConfig::default().sleep_factor,
            peer_urls: BTreeMap::new(),
            release_timeout: Duration::from_secs(5),
            derive_may_promote: false,
            events2_plain: false,
            kernel: DrbdKernel::Auto,
            debug_no_fence: false,
        }
    }
}

/// Parse one `--peer-url NODE=URL`.
pub fn parse_peer_url(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((node, url)) if !node.is_empty() && !url.is_empty() => {
            Ok((node.to_owned(), url.to_owned()))
        }
        _ => Err(format!(
            "expected NODE=URL (the DRBD node name of a peer and its server URL), got {s:?}"
        )),
    }
}

pub struct DrbdArbiter {
    config: DrbdConfig,
    device: PathBuf,
}

impl DrbdArbiter {
    pub fn new(device: &Path, config: DrbdConfig) -> Self {
        DrbdArbiter {
            config,
            device: device.to_owned(),
        }
    }
}

impl Arbiter for DrbdArbiter {
    fn name(&self) -> &'static str {
        "drbd"
    }

    fn run(self: Box<Self>, ctx: ArbiterContext) -> ArbiterFuture {
        Box::pin(async move {
            let resource = resolve_resource(&self.config, &self.device).await?;
            let kernel = kernel_generation(self.config.kernel, &self.device, &resource)?;
            Driver::new(self.config, self.device, resource, kernel, ctx)
                .run()
                .await
        })
    }
}

/// The minor of a block device, `None` for anything else.
fn device_minor(device: &Path) -> Option<u32> {
    let meta = std::fs::metadata(device).ok()?;
    meta.file_type()
        .is_block_device()
        .then(|| libc::minor(meta.rdev()))
}

/// DRBD 9 or 8.4. 8.4 addresses the resource by its device's minor, so the
/// device must be the DRBD block device itself (or a link to it).
fn kernel_generation(
    choice: DrbdKernel,
    device: &Path,
    resource: &str,
) -> anyhow::Result<KernelGeneration> {
    let minor = device_minor(device);
    let generation = match choice {
        DrbdKernel::V9 => KernelGeneration::V9,
        DrbdKernel::V84 => KernelGeneration::V84 { minor: 0 },
        DrbdKernel::Auto => KernelGeneration::detect(minor).unwrap_or_else(|| {
            tracing::info!(
                resource,
                "cannot read the DRBD version from /proc/drbd; assuming DRBD 9"
            );
            KernelGeneration::V9
        }),
    };
    match generation {
        KernelGeneration::V84 { .. } => {
            let minor = minor.with_context(|| {
                format!(
                    "DRBD 8.4 addresses resource {resource} by the minor of its device, but {} is not a block device; pass the DRBD device (/dev/drbdN) as --disk",
                    device.display()
                )
            })?;
            Ok(KernelGeneration::V84 { minor })
        }
        KernelGeneration::V9 => Ok(KernelGeneration::V9),
    }
}

/// `/dev/drbd/by-res/<res>/<vol>` (udev's and LINSTOR's name) -> `<res>`.
pub fn resource_from_by_res_path(device: &Path) -> Option<String> {
    let mut parts = device.components().map(|c| c.as_os_str().to_str());
    // "/", "dev", "drbd", "by-res", res, vol
    let expected = [Some("/"), Some("dev"), Some("drbd"), Some("by-res")];
    for want in expected {
        if parts.next()? != want {
            return None;
        }
    }
    let res = parts.next()??;
    parts.next()??; // the volume number must follow
    Some(res.to_owned())
}

/// Find the resource: the flag, the by-res path, or the minor of a DRBD
/// block device looked up in `drbdsetup status all --json`.
async fn resolve_resource(config: &DrbdConfig, device: &Path) -> anyhow::Result<String> {
    if let Some(res) = &config.resource {
        return Ok(res.clone());
    }
    if let Some(res) = resource_from_by_res_path(device) {
        return Ok(res);
    }
    let meta = std::fs::metadata(device)
        .with_context(|| format!("cannot stat DRBD device {}", device.display()))?;
    if !meta.file_type().is_block_device() {
        anyhow::bail!(
            "cannot tell which DRBD resource {} belongs to: it is not a block device; pass --drbd-resource NAME",
            device.display()
        );
    }
    let minor = libc::minor(meta.rdev());
    let drbdsetup = Drbdsetup::new(&config.drbdsetup, config.command_timeout);
    let statuses = drbdsetup.status("all").await.with_context(|| {
        format!(
            "cannot look up the DRBD resource of {} (minor {minor}); pass --drbd-resource NAME",
            device.display()
        )
    })?;
    statuses
        .iter()
        .find(|s| s.devices.iter().any(|d| d.minor == Some(minor)))
        .map(|s| s.name.clone())
        .with_context(|| {
            format!(
                "no DRBD resource on this host has minor {minor} ({}); pass --drbd-resource NAME",
                device.display()
            )
        })
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "this host".to_owned())
}

/// Which file an open descriptor must point at to count as "the device".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeviceIdentity {
    Block { rdev: u64 },
    File { dev: u64, ino: u64 },
}

impl DeviceIdentity {
    fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        Ok(if meta.file_type().is_block_device() {
            DeviceIdentity::Block { rdev: meta.rdev() }
        } else {
            DeviceIdentity::File {
                dev: meta.dev(),
                ino: meta.ino(),
            }
        })
    }

    fn matches(&self, meta: &std::fs::Metadata) -> bool {
        match *self {
            DeviceIdentity::Block { rdev } => {
                meta.file_type().is_block_device() && meta.rdev() == rdev
            }
            DeviceIdentity::File { dev, ino } => meta.dev() == dev && meta.ino() == ino,
        }
    }
}

/// Descriptors of this process open on the device, except `own`.
fn open_descriptors(identity: DeviceIdentity, own: Option<i32>) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            let fd: Option<i32> = e.file_name().to_str().and_then(|n| n.parse().ok());
            fd.is_some() && fd != own
        })
        .filter(|e| {
            std::fs::metadata(e.path())
                .map(|m| identity.matches(&m))
                .unwrap_or(false)
        })
        .count()
}

/// Names and roles of the peers, from `connection` lines (the model keeps
/// only "some peer is Primary"; operators want to know which).
#[derive(Debug, Default)]
struct Peers {
    /// peer-node-id (or conn-name) -> (conn-name, role).
    by_key: BTreeMap<String, (String, Role)>,
}

impl Peers {
    fn apply(&mut self, resource: &str, line: &Line) {
        let Line::Event(ev) = line else { return };
        if ev.object != ObjectKind::Connection || ev.name() != Some(resource) {
            return;
        }
        let name = ev.conn_name().unwrap_or("").to_owned();
        let key = ev
            .peer_node_id()
            .map(|id| id.to_string())
            .unwrap_or_else(|| name.clone());
        if ev.kind == EventKind::Destroy {
            self.by_key.remove(&key);
            return;
        }
        let role = ev.role().unwrap_or(Role::Unknown);
        let entry = self.by_key.entry(key).or_insert((name.clone(), role));
        if !name.is_empty() {
            entry.0 = name;
        }
        if ev.role().is_some() {
            entry.1 = role;
        }
    }

    fn primary(&self) -> Option<&str> {
        self.by_key
            .values()
            .find(|(_, role)| *role == Role::Primary)
            .map(|(name, _)| name.as_str())
    }
}

/// What the last attempt or step-down left for the operator to read.
fn disk_word(disk: Option<DiskState>) -> String {
    match disk {
        Some(d) => format!("disk {d}"),
        None => "no local disk known".to_owned(),
    }
}

struct Driver {
    config: DrbdConfig,
    device: PathBuf,
    resource: String,
    host: String,
    ctx: ArbiterContext,
    drbdsetup: Drbdsetup,
    promoter: Promoter,
    model: ResourceModel,
    peers: Peers,
    /// Peer Primary named by `status --json` at startup, until events2 reports.
    startup_peer_primary: Option<String>,
    /// The arbiter's own descriptor (auto-promote: it holds the role).
    held: Option<File>,
    identity: Option<DeviceIdentity>,
    /// The last thing that went wrong or happened, for the standby reason.
    note: Option<String>,
    /// Why we are going down, for the `StopServing` grant.
    down_cause: Option<String>,
}

/// How the loop ends.
enum Exit {
    Clean,
    Escalated(String),
}

impl Driver {
    fn new(
        config: DrbdConfig,
        device: PathBuf,
        resource: String,
        kernel: KernelGeneration,
        ctx: ArbiterContext,
    ) -> Self {
        let mut drbdsetup = Drbdsetup::new(&config.drbdsetup, config.command_timeout);
        // 8.4's events2 has no --full: its change lines carry changed keys only.
        let events2_plain = config.events2_plain || kernel != KernelGeneration::V9;
        drbdsetup.events2_full = !events2_plain;
        drbdsetup.kernel = kernel;
        let promoter = Promoter::new(
            PromoterConfig {
                mode: match config.promote {
                    DrbdPromote::Explicit => PromotionMode::Explicit,
                    DrbdPromote::Auto => PromotionMode::AutoPromote,
                },
                sleep_factor: config.sleep_factor,
                ..PromoterConfig::default()
            },
            Instant::now(),
            unix_ms(),
        );
        let model = ResourceModel::new(
            resource.clone(),
            ModelOptions {
                derive_may_promote: config.derive_may_promote,
                change_lines: if events2_plain {
                    ChangeLines::Plain
                } else {
                    ChangeLines::Full
                },
            },
        );
        Driver {
            config,
            device,
            resource,
            host: host_name(),
            ctx,
            drbdsetup,
            promoter,
            model,
            peers: Peers::default(),
            startup_peer_primary: None,
            held: None,
            identity: None,
            note: None,
            down_cause: None,
        }
    }

    async fn run(mut self) -> anyhow::Result<()> {
        tracing::info!(
            resource = %self.resource, device = %self.device.display(),
            mode = ?self.config.promote, drbdsetup = %self.config.drbdsetup.display(),
            kernel = ?self.drbdsetup.kernel,
            "drbd arbiter starting"
        );
        match self.startup().await {
            Exit::Clean => {}
            Exit::Escalated(reason) => return Err(self.escalation_error(&reason)),
        }
        let mut feed = Events2Feed::new(self.drbdsetup.clone(), self.resource.clone());
        let mut shutdown_requested = false;
        let mut step_down_open = true;
        loop {
            let wake = self.promoter.next_wake();
            let input = tokio::select! {
                _ = super::shutdown_signal(&mut self.ctx.shutdown), if !shutdown_requested => {
                    shutdown_requested = true;
                    tracing::info!(resource = %self.resource, "shutdown: releasing the DRBD role");
                    self.down_cause = Some("shutting down".into());
                    Some(Input::Shutdown)
                }
                req = self.ctx.step_down.recv(), if step_down_open => match req {
                    Some(req) => self.on_step_down(req),
                    None => {
                        step_down_open = false;
                        None
                    }
                },
                item = feed.next() => self.on_feed(item),
                _ = sleep_until(wake), if wake.is_some() => Some(Input::Tick),
            };
            if let Some(input) = input {
                if let Exit::Escalated(reason) = self.feed_input(input).await {
                    return Err(self.escalation_error(&reason));
                }
                if self.promoter.phase() == Phase::Stopped {
                    self.ctx.publish(Grant::standby(format!(
                        "shut down; DRBD resource {} released",
                        self.resource
                    )));
                    tracing::info!(resource = %self.resource, "drbd arbiter stopped");
                    return Ok(());
                }
                if shutdown_requested
                    && self.config.debug_no_fence
                    && self.promoter.phase() == Phase::Escalated
                {
                    // Escalated ignores Shutdown; without debug mode the
                    // process had already exited.
                    tracing::warn!(resource = %self.resource, "DEBUG MODE: shutting down with the DRBD resource still escalated (not demoted)");
                    return Ok(());
                }
            }
            self.publish_standby_reason();
        }
    }

    /// `drbdsetup status --json <res>`: adopt a local Primary, or stay
    /// behind a peer Primary, before events2 says anything.
    async fn startup(&mut self) -> Exit {
        if self.drbdsetup.kernel != KernelGeneration::V9 {
            // 8.4's drbdsetup has no `status --json`; events2 replays the state.
            self.ctx.publish(Grant::standby(format!(
                "waiting for drbdsetup events2 to report DRBD resource {} (DRBD 8.4)",
                self.resource
            )));
            return Exit::Clean;
        }
        let status = self.drbdsetup.status(&self.resource).await;
        let found: Option<ResourceStatus> = match status {
            Ok(list) => list.into_iter().find(|s| s.name == self.resource),
            Err(e) => {
                tracing::warn!(resource = %self.resource, "startup status check failed: {e}; waiting for events2");
                self.note = Some(format!("drbdsetup status failed: {e}"));
                None
            }
        };
        let Some(status) = found else {
            self.ctx.publish(Grant::standby(format!(
                "waiting for drbdsetup events2 to report DRBD resource {}",
                self.resource
            )));
            return Exit::Clean;
        };
        self.startup_peer_primary = status.peer_primary().map(|c| {
            if c.name.is_empty() {
                format!("node-id {}", c.peer_node_id.unwrap_or(0))
            } else {
                c.name.clone()
            }
        });
        let view = ClusterView::from_status(&status);
        tracing::info!(resource = %self.resource, ?view, peer_primary = ?self.startup_peer_primary, "startup state from drbdsetup status");
        if !view.local_primary {
            let reason = match &self.startup_peer_primary {
                Some(peer) => format!(
                    "peer node {peer} is Primary for DRBD resource {}",
                    self.resource
                ),
                None => format!(
                    "waiting for drbdsetup events2 to report DRBD resource {}",
                    self.resource
                ),
            };
            self.ctx.publish(self.standby(reason));
        }
        let exit = self.feed_input(Input::View(view)).await;
        self.publish_standby_reason();
        exit
    }

    fn on_step_down(&mut self, req: StepDownRequest) -> Option<Input> {
        let current = match self.promoter.phase() {
            Phase::Serving { epoch } => epoch,
            _ => 0,
        };
        if req.epoch != current {
            tracing::debug!(
                epoch = req.epoch,
                current,
                "stale step-down request ignored"
            );
            return None;
        }
        tracing::warn!(resource = %self.resource, epoch = req.epoch, cause = %req.cause, "the server asks to step down");
        self.down_cause = Some(format!("stepped down because {}", req.cause));
        Some(Input::StepDown(match req.cause {
            StepDownCause::IoHang { .. } | StepDownCause::Frozen { .. } => StepDownReason::IoHang,
            StepDownCause::DeviceFailure(_) | StepDownCause::OpenFailed(_) => {
                StepDownReason::FatalIoError
            }
        }))
    }

    fn on_feed(&mut self, item: FeedItem) -> Option<Input> {
        match item {
            FeedItem::Started => {
                tracing::info!(resource = %self.resource, "drbdsetup events2 started; rebuilding the resource state");
                self.model.reset();
                self.peers = Peers::default();
                None
            }
            FeedItem::Line(line) => {
                self.peers.apply(&self.resource, &line);
                let change = self.model.apply(&line)?;
                let view = ClusterView::from_view(&change.new)?;
                // events2 now speaks for the cluster; the startup hint is stale.
                self.startup_peer_primary = None;
                if self.promoter.is_serving() {
                    if !view.quorum {
                        self.down_cause =
                            Some(format!("lost quorum for DRBD resource {}", self.resource));
                    } else if view.force_io_failures {
                        self.down_cause = Some(format!(
                            "DRBD set force-io-failures on resource {}",
                            self.resource
                        ));
                    } else if !view.local_primary && change.old.role == Role::Primary {
                        self.down_cause = Some(format!(
                            "DRBD made this host Secondary for resource {}",
                            self.resource
                        ));
                    }
                }
                Some(Input::View(view))
            }
        }
    }

    /// Feed one input and carry out the actions, feeding results back, until
    /// the promoter has nothing more to do.
    async fn feed_input(&mut self, input: Input) -> Exit {
        let mut queue = std::collections::VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let actions = self.promoter.handle(Instant::now(), input);
            for action in actions {
                match self.execute(action).await {
                    Step::Continue => {}
                    Step::Result(input) => queue.push_back(input),
                    Step::Escalate(reason) => return Exit::Escalated(reason),
                }
            }
        }
        Exit::Clean
    }

    async fn execute(&mut self, action: Action) -> Step {
        let res = self.resource.clone();
        match action {
            Action::SchedulePromotion { at, disk } => {
                let wait = at.saturating_duration_since(Instant::now());
                tracing::info!(resource = %res, ?wait, disk = %disk_word(disk), "may_promote: promotion attempt scheduled");
                Step::Continue
            }
            Action::RunPrimary => {
                self.ctx
                    .publish(self.standby(format!("promoting: running drbdsetup primary {res}")));
                let result = self.drbdsetup.primary(&res).await;
                match &result {
                    Ok(()) => {
                        tracing::info!(resource = %res, "drbdsetup primary succeeded");
                        self.note = None;
                    }
                    Err(e) => {
                        tracing::warn!(resource = %res, "promotion failed: {e}");
                        self.note = Some(format!("last promotion attempt failed: {e}"));
                    }
                }
                Step::Result(Input::PrimaryResult(drbdsetup::outcome(&result)))
            }
            Action::OpenDevice => {
                let auto = self.config.promote == DrbdPromote::Auto;
                if auto {
                    self.ctx.publish(self.standby(format!(
                        "promoting: opening {} read-write (auto-promote)",
                        self.device.display()
                    )));
                }
                let path = self.device.clone();
                let opened = tokio::task::spawn_blocking(move || {
                    OpenOptions::new().read(true).write(true).open(&path)
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(format!("open panicked: {e}"))));
                let outcome = match opened {
                    Ok(file) => {
                        self.identity = DeviceIdentity::of(&self.device).ok();
                        if auto {
                            // This descriptor is the promotion: keep it.
                            self.held = Some(file);
                        }
                        tracing::info!(resource = %res, device = %self.device.display(), "device opened read-write");
                        OpenOutcome::Opened
                    }
                    Err(e) => {
                        let outcome = OpenOutcome::from_errno(e.raw_os_error().unwrap_or(0));
                        let what = if outcome == OpenOutcome::Lost {
                            "another host is Primary"
                        } else {
                            "check the device and the DRBD resource state"
                        };
                        tracing::warn!(resource = %res, device = %self.device.display(), error = %e, "cannot open the device read-write: {what}");
                        self.note = Some(format!(
                            "opening {} read-write failed: {e} ({what})",
                            self.device.display()
                        ));
                        outcome
                    }
                };
                Step::Result(Input::OpenResult(outcome))
            }
            Action::StartServing { epoch } => {
                tracing::info!(resource = %res, epoch, host = %self.host, "DRBD role held: serving");
                self.note = None;
                self.down_cause = None;
                self.ctx.publish(Grant::Serving { epoch });
                Step::Continue
            }
            Action::StopServing => {
                let cause = self
                    .down_cause
                    .clone()
                    .unwrap_or_else(|| format!("giving up the DRBD role for {res}"));
                tracing::warn!(resource = %res, host = %self.host, "stopping service: {cause}");
                self.ctx
                    .publish(self.standby(format!("stepping down: {cause}")));
                self.note = Some(cause);
                Step::Continue
            }
            Action::CloseDevice => {
                self.close_device().await;
                Step::Continue
            }
            Action::RunSecondary => {
                let result = self.drbdsetup.secondary(&res).await;
                if let Err(e) = &result {
                    tracing::warn!(resource = %res, "demotion failed: {e}; trying secondary --force");
                } else {
                    tracing::info!(resource = %res, "demoted to Secondary");
                }
                Step::Result(Input::SecondaryResult(drbdsetup::outcome(&result)))
            }
            Action::RunSecondaryForce if self.config.debug_no_fence => {
                tracing::warn!(resource = %res, host = %self.host, "DEBUG MODE: would run `drbdsetup secondary --force {res}` (failing the remaining I/O); not running it, counting it as failed");
                Step::Result(Input::SecondaryResult(
                    linstor::promoter::CommandOutcome::Failed,
                ))
            }
            Action::RunSecondaryForce => {
                let result = self.drbdsetup.secondary_force(&res).await;
                if let Err(e) = &result {
                    tracing::error!(resource = %res, "forced demotion failed: {e}");
                } else {
                    tracing::warn!(resource = %res, "demoted to Secondary with --force (remaining I/O was failed)");
                }
                Step::Result(Input::SecondaryResult(drbdsetup::outcome(&result)))
            }
            Action::Escalate { reason } if self.config.debug_no_fence => {
                tracing::error!(
                    resource = %res, host = %self.host,
                    "DEBUG MODE: would escalate: exit non-zero so the service manager restarts or fences this host (could not demote DRBD resource {res}: {reason}); staying up, serving nothing"
                );
                self.ctx.publish(Grant::standby(format!(
                    "DEBUG MODE: could not demote DRBD resource {res} on {}: {reason}; would have exited for fencing",
                    self.host
                )));
                Step::Continue
            }
            Action::Escalate { reason } => Step::Escalate(reason),
            Action::ShutdownComplete => {
                // The phase is now Stopped; the loop notices and returns.
                self.close_own();
                Step::Continue
            }
        }
    }

    fn close_own(&mut self) {
        if let Some(file) = self.held.take() {
            tracing::debug!(fd = file.as_raw_fd(), "closing the arbiter's descriptor");
            drop(file);
        }
    }

    /// Close our descriptor (auto-promote: the demotion), then wait until the
    /// HTTP layer has closed its own, so no I/O runs across `secondary`.
    async fn close_device(&mut self) {
        let identity = match self
            .identity
            .or_else(|| DeviceIdentity::of(&self.device).ok())
        {
            Some(id) => id,
            None => {
                self.close_own();
                return;
            }
        };
        let started = Instant::now();
        // The HTTP layer may still be applying an earlier Serving grant
        // (opening its descriptor); give it a moment to show up in the scan.
        let min_wait = Duration::from_millis(20);
        loop {
            let own = self.held.as_ref().map(|f| f.as_raw_fd());
            let others = open_descriptors(identity, own);
            if others == 0 && started.elapsed() >= min_wait {
                break;
            }
            if started.elapsed() >= self.config.release_timeout {
                tracing::error!(
                    resource = %self.resource, device = %self.device.display(), open = others,
                    "the server still has the device open after {:?}; demoting anyway (secondary will fail, secondary --force fails the remaining I/O)",
                    self.config.release_timeout
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.close_own();
        tracing::debug!(resource = %self.resource, waited = ?started.elapsed(), "device closed by the server and the arbiter");
    }

    fn standby(&self, reason: String) -> Grant {
        let serving_url = self
            .peers
            .primary()
            .or(self.startup_peer_primary.as_deref())
            .and_then(|peer| self.config.peer_urls.get(peer))
            .filter(|u| **u != self.ctx.advertise_url)
            .cloned();
        Grant::Standby {
            reason,
            serving_url,
        }
    }

    /// While not serving and idle, say why, in words an operator understands.
    fn publish_standby_reason(&mut self) {
        let phase = self.promoter.phase();
        let base = match phase {
            Phase::Serving { .. }
            | Phase::Promoting
            | Phase::Opening { .. }
            | Phase::Demoting { .. }
            | Phase::Stopped
            | Phase::Escalated => return,
            Phase::Waiting { at } => {
                let wait = at.saturating_duration_since(Instant::now());
                let view = self.model.view();
                format!(
                    "waiting {:.1} s ({}) before promoting DRBD resource {}",
                    wait.as_secs_f64(),
                    disk_word(view.local_disk),
                    self.resource
                )
            }
            Phase::Standby => self.standby_words(&self.model.view()),
        };
        let reason = match &self.note {
            Some(note) => format!("{base}; {note}"),
            None => base,
        };
        self.ctx.publish(self.standby(reason));
    }

    fn standby_words(&self, view: &ResourceView) -> String {
        let res = &self.resource;
        if let Some(peer) = &self.startup_peer_primary {
            return format!("peer node {peer} is Primary for DRBD resource {res}");
        }
        if !view.initial_state_complete {
            return format!("waiting for drbdsetup events2 to report DRBD resource {res}");
        }
        if !view.exists {
            return format!(
                "DRBD resource {res} is not configured on this host (drbdsetup events2 does not show it)"
            );
        }
        if view.peer_primary {
            let peer = self.peers.primary().unwrap_or("(unnamed)");
            return format!("peer node {peer} is Primary for DRBD resource {res}");
        }
        if view.force_io_failures {
            return format!("DRBD resource {res} has force-io-failures set on this host");
        }
        if !view.quorum {
            return format!("no quorum for DRBD resource {res} on this host");
        }
        if view.role == Role::Primary {
            return format!("this host is still Primary for DRBD resource {res} but not serving");
        }
        if !view.may_promote {
            return format!(
                "DRBD does not allow promoting resource {res} yet (may_promote:no, {})",
                disk_word(view.local_disk)
            );
        }
        format!("DRBD resource {res} may be promoted; attempting shortly")
    }

    fn escalation_error(&self, reason: &str) -> anyhow::Error {
        tracing::error!(
            resource = %self.resource, host = %self.host, device = %self.device.display(),
            "ESCALATING: could not demote DRBD resource {} on {}: {reason}; this host may still be Primary with nobody serving; exiting non-zero so the service manager can restart or fence it",
            self.resource, self.host
        );
        self.ctx.publish(Grant::standby(format!(
            "could not demote DRBD resource {} on {}: {reason}",
            self.resource, self.host
        )));
        anyhow::anyhow!(
            "could not demote DRBD resource {} on host {}: {reason}; check `drbdsetup status {}` and who holds {} open; the service manager should fence this host",
            self.resource,
            self.host,
            self.resource,
            self.device.display()
        )
    }
}

enum Step {
    Continue,
    Result(Input),
    Escalate(String),
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 8.4 needs the minor of a block device; 9 names the resource.
    #[test]
    fn kernel_generation_needs_a_block_device_on_84() {
        let file = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(
            kernel_generation(DrbdKernel::V9, file.path(), "hb").unwrap(),
            KernelGeneration::V9
        );
        let err = kernel_generation(DrbdKernel::V84, file.path(), "hb").unwrap_err();
        assert!(err.to_string().contains("not a block device"), "{err}");
        assert!(err.to_string().contains("resource hb"), "{err}");
        // /dev/loop0 (major 7, minor 0) stands in for /dev/drbd0 where present.
        if let Some(minor) = device_minor(Path::new("/dev/loop0")) {
            assert_eq!(
                kernel_generation(DrbdKernel::V84, Path::new("/dev/loop0"), "hb").unwrap(),
                KernelGeneration::V84 { minor }
            );
        }
        // No /proc/drbd on the build hosts: auto falls back to 9.
        if !Path::new("/proc/drbd").exists() {
            assert_eq!(
                kernel_generation(DrbdKernel::Auto, file.path(), "hb").unwrap(),
                KernelGeneration::V9
            );
        }
    }

    #[test]
    fn resource_from_device_paths() {
        assert_eq!(
            resource_from_by_res_path(Path::new("/dev/drbd/by-res/xcp-persistent-ha-statefile/0"))
                .as_deref(),
            Some("xcp-persistent-ha-statefile")
        );
        assert_eq!(
            resource_from_by_res_path(Path::new("/dev/drbd/by-res/r0/1")).as_deref(),
            Some("r0")
        );
        assert_eq!(
            resource_from_by_res_path(Path::new("/dev/drbd/by-res/r0")),
            None
        );
        assert_eq!(resource_from_by_res_path(Path::new("/dev/drbd1000")), None);
        assert_eq!(
            resource_from_by_res_path(Path::new("/tmp/dev/drbd/by-res/r0/0")),
            None
        );
    }

    #[test]
    fn peer_url_flag() {
        assert_eq!(
            parse_peer_url("node-b=http://10.0.0.2:8076"),
            Ok(("node-b".into(), "http://10.0.0.2:8076".into()))
        );
        assert!(parse_peer_url("node-b").is_err());
        assert!(parse_peer_url("=http://x").is_err());
    }

    #[test]
    fn peers_follow_connection_lines() {
        let mut peers = Peers::default();
        let lines = [
            "exists connection name:r0 peer-node-id:1 conn-name:node-b connection:Connected role:Secondary",
            "exists connection name:other peer-node-id:2 conn-name:node-c connection:Connected role:Primary",
            "change connection name:r0 peer-node-id:1 conn-name:node-b connection:Connected role:Primary",
        ];
        for l in &lines[..2] {
            peers.apply("r0", &linstor::events2::parse_line(l));
        }
        assert_eq!(peers.primary(), None);
        peers.apply("r0", &linstor::events2::parse_line(lines[2]));
        assert_eq!(peers.primary(), Some("node-b"));
        peers.apply(
            "r0",
            &linstor::events2::parse_line("destroy connection name:r0 peer-node-id:1"),
        );
        assert_eq!(peers.primary(), None);
    }

    #[test]
    fn descriptors_on_a_file_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, [0u8; 512]).unwrap();
        let id = DeviceIdentity::of(&path).unwrap();
        assert_eq!(open_descriptors(id, None), 0);
        let a = File::open(&path).unwrap();
        let b = File::open(&path).unwrap();
        assert_eq!(open_descriptors(id, None), 2);
        assert_eq!(open_descriptors(id, Some(a.as_raw_fd())), 1);
        drop(b);
        assert_eq!(open_descriptors(id, Some(a.as_raw_fd())), 0);
    }
}
