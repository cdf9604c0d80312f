//! The election, as a sans-I/O state machine.
//!
//! DRBD decides who may be Primary; this machine decides *when* to ask and
//! what to do with the answer. It owns no process, file or timer: the caller
//! feeds [`Input`]s with the current [`Instant`] and carries out the returned
//! [`Action`]s in order, reporting results of `RunPrimary`, `OpenDevice`,
//! `RunSecondary` and `RunSecondaryForce` back as inputs. Between inputs the
//! caller sleeps until [`Promoter::next_wake`] and then sends [`Input::Tick`].
//!
//! Rules (drbd-reactor's promoter, with XHA's tighter budget):
//! - promote when `may_promote` holds (an update with `may_promote` true, or
//!   a re-check every [`PromoterConfig::recheck_interval`] while it holds and
//!   we are not Primary), after a disk-state-weighted delay so the best copy
//!   wins; re-check `may_promote` when the delay ends (a better host may have
//!   won meanwhile); never `--force`;
//! - attempts are at least [`PromoterConfig::min_attempt_interval`] apart;
//! - after winning: open the device, then serve;
//! - on quorum loss, force-io-failures, a forced Secondary, a step-down
//!   request or shutdown: stop serving, close, `secondary`, on failure
//!   `secondary --force`, on failure escalate (exit non-zero: the service
//!   manager fences);
//! - a local Primary found while standby (daemon restart) is adopted at once;
//!   a peer Primary keeps us standby.
//!
//! With [`PromotionMode::AutoPromote`] (resources with `auto-promote yes`,
//! as XCP-ng configures existing statefile volumes) opening the device
//! read-write *is* the promotion and closing it is the demotion: no
//! `primary`/`secondary` commands are run.
//! If DRBD does not auto-demote on that close (another local opener), the
//! role stays Primary and is not retried here; `drbdsetup status` shows it.
//!
//! The caller's loop, in outline (the arbiter glue owns it):
//!
//! ```text
//! feed = Events2Feed::new(drbdsetup, res); model = ResourceModel::new(res, opts)
//! loop select {
//!   item = feed.next()           => Started: model.reset()
//!                                   Line(l): if model.apply(&l) changed and
//!                                   ClusterView::from_view(&model.view()) is Some(v):
//!                                   run(promoter.handle(now, Input::View(v)))
//!   sleep_until(next_wake())     => run(promoter.handle(now, Input::Tick))
//!   server says EIO/hang         => run(promoter.handle(now, Input::StepDown(..)))
//!   SIGTERM                      => run(promoter.handle(now, Input::Shutdown))
//! }
//! run(actions): for each action in order; RunPrimary -> drbdsetup.primary(res)
//!   then handle(now, Input::PrimaryResult(drbdsetup::outcome(&result))), and
//!   likewise for OpenDevice / RunSecondary / RunSecondaryForce; Escalate ->
//!   exit non-zero; ShutdownComplete -> exit zero.
//! ```

use std::time::{Duration, Instant};

use crate::events2::{DiskState, Role};
use crate::model::ResourceView;
use crate::status::ResourceStatus;

/// How this resource is promoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromotionMode {
    /// `auto-promote no`: `drbdsetup primary` / `secondary`.
    Explicit,
    /// `auto-promote yes`: open(O_RDWR) promotes, the last close demotes.
    AutoPromote,
}

/// Tunables. Defaults are sized for XHA: the whole failover (DRBD noticing
/// the dead Primary, this election, clients re-selecting a server) must fit
/// in T2/2 = 30 s with default HA timeouts, and far less is better.
#[derive(Debug, Clone, PartialEq)]
pub struct PromoterConfig {
    pub mode: PromotionMode,
    /// Multiplies the disk-state delay (UpToDate 0 s, Consistent 1 s,
    /// Outdated 2 s, Inconsistent 3 s, anything else 6 s). Default 0.5: the
    /// worst case (a diskless survivor) waits 3 s instead of 6 s, about a
    /// tenth of the budget, while the 0.5 s steps between disk states remain
    /// far longer than the spread in when hosts see the same DRBD event
    /// (milliseconds), so the best copy still promotes first.
    pub sleep_factor: f64,
    /// Minimum time between two promotion attempts. drbd-reactor uses 20 s,
    /// which alone would eat most of XHA's budget after one lost race; 1 s
    /// is still far longer than a `drbdsetup primary` round trip.
    pub min_attempt_interval: Duration,
    /// While `may_promote` holds and we are not Primary, look again this
    /// often (an attempt may have failed without any new event).
    pub recheck_interval: Duration,
    /// After stepping down, stay out of the election this long so another
    /// host can win (a host that just failed I/O should not win again).
    pub cooldown_after_step_down: Duration,
    /// After a configuration or environment error (exit 10/20/121), wait
    /// this long before trying again: retrying faster only fills the log.
    pub config_error_backoff: Duration,
}

impl Default for PromoterConfig {
    fn default() -> Self {
        PromoterConfig {
            mode: PromotionMode::Explicit,
            sleep_factor: 0.5,
            min_attempt_interval: Duration::from_secs(1),
            recheck_interval: Duration::from_secs(1),
            cooldown_after_step_down: Duration::from_secs(2),
            config_error_backoff: Duration::from_secs(5),
        }
    }
}

impl PromoterConfig {
    /// The delay before promoting with this local disk state.
    pub fn promote_delay(&self, disk: Option<DiskState>) -> Duration {
        let secs = match disk {
            Some(DiskState::UpToDate) => 0.0,
            Some(DiskState::Consistent) => 1.0,
            Some(DiskState::Outdated) => 2.0,
            Some(DiskState::Inconsistent) => 3.0,
            _ => 6.0,
        };
        Duration::from_secs_f64((secs * self.sleep_factor).max(0.0))
    }
}

/// What the election needs from the resource model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterView {
    pub may_promote: bool,
    pub local_primary: bool,
    pub quorum: bool,
    pub force_io_failures: bool,
    pub peer_primary: bool,
    pub local_disk: Option<DiskState>,
}

impl ClusterView {
    /// `None` until the initial `events2` dump is complete: a partial view
    /// (resource line seen, connections not yet) must not start an election.
    pub fn from_view(view: &ResourceView) -> Option<ClusterView> {
        (view.initial_state_complete && view.exists).then_some(ClusterView {
            may_promote: view.may_promote,
            local_primary: view.role == Role::Primary,
            quorum: view.quorum,
            force_io_failures: view.force_io_failures,
            peer_primary: view.peer_primary,
            local_disk: view.local_disk,
        })
    }

    /// From `drbdsetup status --json` at startup (before `events2`). It
    /// carries no `may_promote`, so it can only adopt or hold back.
    pub fn from_status(status: &ResourceStatus) -> ClusterView {
        ClusterView {
            may_promote: false,
            local_primary: status.is_local_primary(),
            quorum: status.quorum(),
            force_io_failures: status.force_io_failures,
            peer_primary: status.peer_primary().is_some(),
            local_disk: status
                .devices
                .iter()
                .map(|d| d.disk())
                .max_by_key(|d| crate::model::disk_rank(Some(*d))),
        }
    }
}

/// Result of a `drbdsetup primary|secondary` run, as the election sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandOutcome {
    Done,
    /// Exit 11/17: refused state change (another Primary, no quorum...).
    Lost,
    /// Exit 10/20/121: configuration or environment error.
    ConfigError,
    /// Killed after the timeout: the state change may or may not have happened.
    TimedOut,
    /// Anything else (other exit code, spawn failure).
    Failed,
}

/// Result of opening the device read-write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenOutcome {
    Opened,
    /// EROFS / EMEDIUMTYPE: not Primary (auto-promote: somebody else won).
    Lost,
    /// Anything else (ENOTRECOVERABLE = force-io-failures, ENOENT...).
    Failed,
}

impl OpenOutcome {
    pub fn from_errno(errno: i32) -> OpenOutcome {
        match errno {
            libc::EROFS | libc::EMEDIUMTYPE => OpenOutcome::Lost,
            _ => OpenOutcome::Failed,
        }
    }
}

/// Why the server asks us to step down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepDownReason {
    /// The device returned a fatal EIO.
    FatalIoError,
    /// A device request did not complete in time.
    IoHang,
}

/// Why a serving host stops serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoteReason {
    QuorumLost,
    ForceIoFailures,
    /// DRBD made us Secondary behind our back.
    RoleLost,
    StepDown(StepDownReason),
    Shutdown,
    /// Found Primary while standby but without quorum / with failing I/O.
    StrayPrimary,
    /// Promoted, but opening the device failed.
    OpenFailed,
}

/// Inputs of the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The resource view after a model change (or from `status` at startup).
    View(ClusterView),
    /// A timer tick; send one at or after [`Promoter::next_wake`].
    Tick,
    /// Result of [`Action::RunPrimary`].
    PrimaryResult(CommandOutcome),
    /// Result of [`Action::OpenDevice`].
    OpenResult(OpenOutcome),
    /// Result of [`Action::RunSecondary`] or [`Action::RunSecondaryForce`].
    SecondaryResult(CommandOutcome),
    /// The server hit a fatal I/O error or a hang.
    StepDown(StepDownReason),
    /// Local shutdown (SIGTERM).
    Shutdown,
}

/// Actions for the caller, to be carried out in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A promotion attempt is due at `at` (informational: the caller's
    /// timer follows [`Promoter::next_wake`]).
    SchedulePromotion {
        at: Instant,
        disk: Option<DiskState>,
    },
    /// Run `drbdsetup primary <res>` (with a timeout); report `PrimaryResult`.
    RunPrimary,
    /// Open the device O_RDWR|O_DIRECT; report `OpenResult`.
    OpenDevice,
    /// Start answering requests as the serving host.
    StartServing { epoch: u64 },
    /// Stop answering requests (before anything else on the way down).
    StopServing,
    /// Close the device.
    CloseDevice,
    /// Run `drbdsetup secondary <res>`; report `SecondaryResult`.
    RunSecondary,
    /// Run `drbdsetup secondary --force <res>`; report `SecondaryResult`.
    RunSecondaryForce,
    /// Demotion failed twice: exit non-zero so the service manager fences.
    Escalate { reason: String },
    /// Shutdown finished cleanly: exit zero.
    ShutdownComplete,
}

/// Where the election stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Standby,
    /// Disk-state delay running; attempt at `at`.
    Waiting {
        at: Instant,
    },
    /// `drbdsetup primary` in flight.
    Promoting,
    /// Device open in flight (`adopting`: we found ourselves Primary).
    Opening {
        adopting: bool,
    },
    Serving {
        epoch: u64,
    },
    /// `secondary` (or `secondary --force`) in flight.
    Demoting {
        forced: bool,
    },
    Stopped,
    Escalated,
}

/// The election for one resource on this host.
#[derive(Debug, Clone)]
pub struct Promoter {
    config: PromoterConfig,
    phase: Phase,
    view: Option<ClusterView>,
    last_attempt: Option<Instant>,
    next_check: Option<Instant>,
    cooldown_until: Option<Instant>,
    /// We demoted; a view still saying Primary is stale until one says Secondary.
    expect_secondary: bool,
    /// A view showed us Primary since we started opening/serving.
    seen_primary: bool,
    /// A reason to go down that arrived while a command was in flight.
    pending_down: Option<DemoteReason>,
    demote_reason: Option<DemoteReason>,
    shutting_down: bool,
    clock_base: Instant,
    unix_ms_base: u64,
    last_epoch: u64,
}

impl Promoter {
    /// `now` and `unix_ms_now` are read together once; epochs are derived
    /// from them (see [`Promoter::epoch`]).
    pub fn new(config: PromoterConfig, now: Instant, unix_ms_now: u64) -> Promoter {
        Promoter {
            config,
            phase: Phase::Standby,
            view: None,
            last_attempt: None,
            next_check: None,
            cooldown_until: None,
            expect_secondary: false,
            seen_primary: false,
            pending_down: None,
            demote_reason: None,
            shutting_down: false,
            clock_base: now,
            unix_ms_base: unix_ms_now,
            last_epoch: 0,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn config(&self) -> &PromoterConfig {
        &self.config
    }

    pub fn is_serving(&self) -> bool {
        matches!(self.phase, Phase::Serving { .. })
    }

    /// The epoch of the current (or last) takeover: wall-clock milliseconds
    /// since the Unix epoch at the moment this host started serving, derived
    /// from the monotonic clock so it never goes backwards within a process,
    /// and at least one more than the previous epoch. Across hosts it grows
    /// with each takeover as long as clocks agree to better than the time
    /// between takeovers (seconds); 0 before the first takeover.
    pub fn epoch(&self) -> u64 {
        self.last_epoch
    }

    /// When the caller should send the next [`Input::Tick`].
    pub fn next_wake(&self) -> Option<Instant> {
        match self.phase {
            Phase::Waiting { at } => Some(at),
            Phase::Standby => self.next_check,
            _ => None,
        }
    }

    /// Feed one input; returns the actions to carry out, in order.
    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        let mut actions = Vec::new();
        match input {
            Input::View(view) => self.on_view(now, view, &mut actions),
            Input::Tick => self.on_tick(now, &mut actions),
            Input::PrimaryResult(outcome) => self.on_primary(now, outcome, &mut actions),
            Input::OpenResult(outcome) => self.on_open(now, outcome, &mut actions),
            Input::SecondaryResult(outcome) => self.on_secondary(now, outcome, &mut actions),
            Input::StepDown(reason) => {
                self.go_down(now, DemoteReason::StepDown(reason), &mut actions)
            }
            Input::Shutdown => {
                self.shutting_down = true;
                self.go_down(now, DemoteReason::Shutdown, &mut actions);
            }
        }
        actions
    }

    fn on_view(&mut self, now: Instant, view: ClusterView, actions: &mut Vec<Action>) {
        self.view = Some(view);
        if !view.local_primary {
            self.expect_secondary = false;
        }
        match self.phase {
            Phase::Standby | Phase::Waiting { .. } => {
                if view.local_primary && !self.expect_secondary {
                    if view.quorum && !view.force_io_failures {
                        tracing::info!("found this host Primary while standby: adopting it");
                        self.phase = Phase::Opening { adopting: true };
                        self.seen_primary = true;
                        actions.push(Action::OpenDevice);
                    } else {
                        tracing::warn!(
                            quorum = view.quorum,
                            force_io_failures = view.force_io_failures,
                            "this host is Primary but unusable: demoting it"
                        );
                        self.demote(now, DemoteReason::StrayPrimary, actions);
                    }
                } else if self.phase == Phase::Standby {
                    self.consider_promotion(now, actions);
                }
            }
            Phase::Serving { .. } => {
                if view.local_primary {
                    self.seen_primary = true;
                }
                if let Some(reason) = self.serving_problem(&view) {
                    self.go_down(now, reason, actions);
                }
            }
            Phase::Promoting | Phase::Opening { .. } => {
                if view.local_primary {
                    self.seen_primary = true;
                }
                if self.pending_down.is_none() {
                    self.pending_down = self.serving_problem(&view);
                }
            }
            Phase::Demoting { .. } | Phase::Stopped | Phase::Escalated => {}
        }
    }

    /// Why a (would-be) serving host must stop, judged from the view.
    fn serving_problem(&self, view: &ClusterView) -> Option<DemoteReason> {
        if !view.quorum {
            Some(DemoteReason::QuorumLost)
        } else if view.force_io_failures {
            Some(DemoteReason::ForceIoFailures)
        } else if self.seen_primary && !view.local_primary {
            Some(DemoteReason::RoleLost)
        } else {
            None
        }
    }

    fn on_tick(&mut self, now: Instant, actions: &mut Vec<Action>) {
        match self.phase {
            Phase::Waiting { at } if now >= at => {
                let view = self.view.expect("waiting implies a view");
                if view.may_promote && view.quorum && !view.peer_primary && !view.force_io_failures
                {
                    self.last_attempt = Some(now);
                    self.seen_primary = false;
                    match self.config.mode {
                        PromotionMode::Explicit => {
                            self.phase = Phase::Promoting;
                            actions.push(Action::RunPrimary);
                        }
                        PromotionMode::AutoPromote => {
                            self.phase = Phase::Opening { adopting: false };
                            actions.push(Action::OpenDevice);
                        }
                    }
                } else {
                    tracing::debug!(?view, "promotion no longer possible when the delay ended");
                    self.phase = Phase::Standby;
                    self.next_check = None;
                }
            }
            Phase::Standby if self.next_check.is_some_and(|t| now >= t) => {
                self.next_check = None;
                self.consider_promotion(now, actions);
            }
            _ => {}
        }
    }

    /// In standby: schedule an attempt if `may_promote` holds.
    fn consider_promotion(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let Some(view) = self.view else { return };
        if !view.may_promote
            || view.peer_primary
            || view.local_primary
            || !view.quorum
            || view.force_io_failures
        {
            return;
        }
        if let Some(until) = self.cooldown_until.filter(|t| now < *t) {
            self.next_check = Some(until);
            return;
        }
        let mut at = now + self.config.promote_delay(view.local_disk);
        if let Some(last) = self.last_attempt {
            at = at.max(last + self.config.min_attempt_interval);
        }
        self.phase = Phase::Waiting { at };
        actions.push(Action::SchedulePromotion {
            at,
            disk: view.local_disk,
        });
    }

    fn on_primary(&mut self, now: Instant, outcome: CommandOutcome, actions: &mut Vec<Action>) {
        if self.phase != Phase::Promoting {
            tracing::warn!(?outcome, phase = ?self.phase, "unexpected primary result ignored");
            return;
        }
        match outcome {
            CommandOutcome::Done => {
                if let Some(reason) = self.pending_down.take() {
                    self.demote(now, reason, actions);
                } else {
                    self.phase = Phase::Opening { adopting: false };
                    actions.push(Action::OpenDevice);
                }
            }
            other => {
                // TimedOut: the promotion may still have happened; the next
                // view then shows us Primary and standby adopts it.
                let retry = match other {
                    CommandOutcome::ConfigError | CommandOutcome::Failed => {
                        self.config.config_error_backoff
                    }
                    _ => self.config.recheck_interval,
                };
                self.back_to_standby(now, retry, actions);
            }
        }
    }

    fn on_open(&mut self, now: Instant, outcome: OpenOutcome, actions: &mut Vec<Action>) {
        let Phase::Opening { adopting } = self.phase else {
            tracing::warn!(?outcome, phase = ?self.phase, "unexpected open result ignored");
            return;
        };
        let auto = self.config.mode == PromotionMode::AutoPromote;
        match outcome {
            OpenOutcome::Opened => {
                if let Some(reason) = self.pending_down.take() {
                    actions.push(Action::CloseDevice);
                    self.demote(now, reason, actions);
                } else {
                    let epoch = self.next_epoch(now);
                    self.phase = Phase::Serving { epoch };
                    actions.push(Action::StartServing { epoch });
                }
            }
            // Auto-promote: somebody else won. Adopting: the view was stale.
            OpenOutcome::Lost if auto || adopting => {
                self.back_to_standby(now, self.config.recheck_interval, actions)
            }
            _ if auto => self.back_to_standby(now, self.config.config_error_backoff, actions),
            // We ran `primary` and cannot use the device: give the role up.
            _ => {
                tracing::error!(?outcome, "promoted but could not open the device: demoting");
                self.demote(now, DemoteReason::OpenFailed, actions)
            }
        }
    }

    fn on_secondary(&mut self, now: Instant, outcome: CommandOutcome, actions: &mut Vec<Action>) {
        let Phase::Demoting { forced } = self.phase else {
            tracing::warn!(?outcome, phase = ?self.phase, "unexpected secondary result ignored");
            return;
        };
        match (outcome, forced) {
            (CommandOutcome::Done, _) => self.demoted(now, actions),
            (_, false) => {
                tracing::warn!(?outcome, "secondary failed: trying secondary --force");
                self.phase = Phase::Demoting { forced: true };
                actions.push(Action::RunSecondaryForce);
            }
            (_, true) => {
                let reason = format!(
                    "could not demote (reason {:?}): secondary and secondary --force both failed ({outcome:?})",
                    self.demote_reason
                );
                tracing::error!("{reason}");
                self.phase = Phase::Escalated;
                actions.push(Action::Escalate { reason });
            }
        }
    }

    /// Leave the serving path for `reason`, from whatever phase we are in.
    fn go_down(&mut self, now: Instant, reason: DemoteReason, actions: &mut Vec<Action>) {
        match self.phase {
            Phase::Serving { .. } => {
                tracing::warn!(?reason, "stepping down");
                actions.push(Action::StopServing);
                actions.push(Action::CloseDevice);
                self.demote(now, reason, actions);
            }
            Phase::Promoting | Phase::Opening { .. } => {
                self.pending_down.get_or_insert(reason);
            }
            Phase::Standby | Phase::Waiting { .. } => {
                self.phase = Phase::Standby;
                if self.shutting_down {
                    self.phase = Phase::Stopped;
                    actions.push(Action::ShutdownComplete);
                } else {
                    let until = now + self.config.cooldown_after_step_down;
                    self.cooldown_until = Some(until);
                    // may_promote may hold throughout: look again when the cooldown ends.
                    self.next_check = Some(until);
                }
            }
            // Already going down: `shutting_down` decides where it ends.
            Phase::Demoting { .. } | Phase::Stopped | Phase::Escalated => {}
        }
    }

    /// Start giving up the Primary role (device already closed or never opened).
    fn demote(&mut self, now: Instant, reason: DemoteReason, actions: &mut Vec<Action>) {
        self.demote_reason = Some(reason);
        self.pending_down = None;
        match self.config.mode {
            PromotionMode::Explicit => {
                self.phase = Phase::Demoting { forced: false };
                actions.push(Action::RunSecondary);
            }
            // Closing was the demotion: DRBD auto-demotes on the last close.
            PromotionMode::AutoPromote => self.demoted(now, actions),
        }
    }

    fn demoted(&mut self, now: Instant, actions: &mut Vec<Action>) {
        self.expect_secondary = true;
        self.seen_primary = false;
        if self.shutting_down {
            self.phase = Phase::Stopped;
            actions.push(Action::ShutdownComplete);
        } else {
            self.phase = Phase::Standby;
            self.cooldown_until = Some(now + self.config.cooldown_after_step_down);
            self.next_check = self.cooldown_until;
        }
    }

    fn back_to_standby(&mut self, now: Instant, retry_after: Duration, actions: &mut Vec<Action>) {
        self.seen_primary = false;
        if self.shutting_down || self.pending_down == Some(DemoteReason::Shutdown) {
            self.phase = Phase::Stopped;
            actions.push(Action::ShutdownComplete);
            return;
        }
        if let Some(reason) = self.pending_down.take() {
            if matches!(reason, DemoteReason::StepDown(_)) {
                self.cooldown_until = Some(now + self.config.cooldown_after_step_down);
            }
        }
        self.phase = Phase::Standby;
        self.next_check = Some(now + retry_after);
    }

    fn next_epoch(&mut self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.clock_base).as_millis() as u64;
        self.last_epoch = (self.unix_ms_base + elapsed).max(self.last_epoch + 1);
        self.last_epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const STEP: Duration = Duration::from_millis(100);

    /// One simulated host: its promoter and what it is doing.
    struct Host {
        promoter: Promoter,
        quorum: bool,
        partitioned: bool,
        force_io_failures: bool,
        disk: Option<DiskState>,
        last_view: Option<ClusterView>,
        /// Results of commands started in the previous step.
        pending: Vec<Input>,
        actions: Vec<(Instant, Action)>,
        serving: bool,
        open: bool,
    }

    /// A fake DRBD cluster: grants Primary to exactly one visible caller.
    struct Cluster {
        now: Instant,
        mode: PromotionMode,
        hosts: Vec<Host>,
        primaries: BTreeSet<usize>,
        /// Every `primary` is refused (e.g. concurrent state changes).
        refuse_all: bool,
        secondary_failures: usize,
        force_failures: usize,
        /// Promotions in flight: resolved together at the next step, so
        /// hosts that ask in the same step really race.
        in_flight: Vec<(usize, Action)>,
    }

    impl Cluster {
        fn new(n: usize, mode: PromotionMode) -> Cluster {
            let now = Instant::now();
            let config = PromoterConfig {
                mode,
                ..PromoterConfig::default()
            };
            Cluster {
                now,
                mode,
                hosts: (0..n)
                    .map(|i| Host {
                        promoter: Promoter::new(config.clone(), now, 1_000_000 + i as u64),
                        quorum: true,
                        partitioned: false,
                        force_io_failures: false,
                        disk: Some(DiskState::UpToDate),
                        last_view: None,
                        pending: Vec::new(),
                        actions: Vec::new(),
                        serving: false,
                        open: false,
                    })
                    .collect(),
                primaries: BTreeSet::new(),
                refuse_all: false,
                secondary_failures: 0,
                force_failures: 0,
                in_flight: Vec::new(),
            }
        }

        fn visible(&self, a: usize, b: usize) -> bool {
            a == b || !(self.hosts[a].partitioned || self.hosts[b].partitioned)
        }

        fn has_quorum(&self, i: usize) -> bool {
            self.hosts[i].quorum && !self.hosts[i].partitioned
        }

        fn view(&self, i: usize) -> ClusterView {
            let local_primary = self.primaries.contains(&i);
            let peer_primary = self.primaries.iter().any(|&p| p != i && self.visible(i, p));
            let quorum = self.has_quorum(i);
            let force = self.hosts[i].force_io_failures;
            ClusterView {
                may_promote: quorum && !local_primary && !peer_primary && !force,
                local_primary,
                quorum,
                force_io_failures: force,
                peer_primary,
                local_disk: self.hosts[i].disk,
            }
        }

        fn try_primary(&mut self, i: usize) -> bool {
            let refused = self.refuse_all
                || !self.has_quorum(i)
                || self.primaries.iter().any(|&p| p != i && self.visible(i, p));
            if !refused {
                self.primaries.insert(i);
            }
            !refused
        }

        fn input(&mut self, i: usize, input: Input) {
            let now = self.now;
            let actions = self.hosts[i].promoter.handle(now, input);
            for action in actions {
                self.hosts[i].actions.push((now, action.clone()));
                self.execute(i, action);
                let serving = self.hosts.iter().filter(|h| h.serving).count();
                assert!(serving <= 1, "two hosts serving at {:?}", now);
            }
        }

        fn execute(&mut self, i: usize, action: Action) {
            match action {
                Action::RunPrimary | Action::OpenDevice => self.in_flight.push((i, action)),
                Action::StartServing { .. } => {
                    assert!(self.hosts[i].open, "serving without an open device");
                    assert!(self.primaries.contains(&i), "serving while not Primary");
                    self.hosts[i].serving = true;
                }
                Action::StopServing => self.hosts[i].serving = false,
                Action::CloseDevice => {
                    assert!(!self.hosts[i].serving, "closing while serving");
                    self.hosts[i].open = false;
                    if self.mode == PromotionMode::AutoPromote {
                        self.primaries.remove(&i);
                    }
                }
                Action::RunSecondary | Action::RunSecondaryForce => {
                    assert!(!self.hosts[i].serving, "demoting while serving");
                    let counter = if action == Action::RunSecondary {
                        &mut self.secondary_failures
                    } else {
                        &mut self.force_failures
                    };
                    let outcome = if *counter > 0 {
                        *counter -= 1;
                        CommandOutcome::Lost
                    } else {
                        self.primaries.remove(&i);
                        CommandOutcome::Done
                    };
                    self.hosts[i].pending.push(Input::SecondaryResult(outcome));
                }
                Action::SchedulePromotion { .. }
                | Action::Escalate { .. }
                | Action::ShutdownComplete => {}
            }
        }

        fn resolve(&mut self, i: usize, action: Action) {
            let input = if action == Action::RunPrimary {
                let won = self.try_primary(i);
                Input::PrimaryResult(if won {
                    CommandOutcome::Done
                } else {
                    CommandOutcome::Lost
                })
            } else {
                let ok = match self.mode {
                    PromotionMode::Explicit => self.primaries.contains(&i),
                    PromotionMode::AutoPromote => {
                        self.primaries.contains(&i) || self.try_primary(i)
                    }
                };
                self.hosts[i].open = ok;
                Input::OpenResult(if ok {
                    OpenOutcome::Opened
                } else {
                    OpenOutcome::Lost
                })
            };
            self.hosts[i].pending.push(input);
        }

        /// One step: resolve the race, deliver results, new views, due ticks.
        fn step(&mut self) {
            for (i, action) in std::mem::take(&mut self.in_flight) {
                self.resolve(i, action);
            }
            for i in 0..self.hosts.len() {
                for input in std::mem::take(&mut self.hosts[i].pending) {
                    self.input(i, input);
                }
                let view = self.view(i);
                if self.hosts[i].last_view != Some(view) {
                    self.hosts[i].last_view = Some(view);
                    self.input(i, Input::View(view));
                }
                if self.hosts[i]
                    .promoter
                    .next_wake()
                    .is_some_and(|t| t <= self.now)
                {
                    self.input(i, Input::Tick);
                }
            }
            self.now += STEP;
        }

        fn run(&mut self, duration: Duration) {
            let end = self.now + duration;
            while self.now < end {
                self.step();
            }
        }

        fn serving(&self) -> Vec<usize> {
            (0..self.hosts.len())
                .filter(|&i| self.hosts[i].serving)
                .collect()
        }

        fn count(&self, i: usize, pred: impl Fn(&Action) -> bool) -> usize {
            self.hosts[i]
                .actions
                .iter()
                .filter(|(_, a)| pred(a))
                .count()
        }

        fn lost_results(&self, i: usize) -> usize {
            // Losses are inputs, not actions: count primary attempts minus wins.
            let attempts = self.count(i, |a| *a == Action::RunPrimary);
            let wins = self.count(i, |a| matches!(a, Action::StartServing { .. }));
            attempts - wins
        }
    }

    #[test]
    fn three_host_race_one_winner() {
        let mut cluster = Cluster::new(3, PromotionMode::Explicit);
        // Make all three attempt at the same instant: results arrive a step later.
        cluster.run(Duration::from_secs(5));
        assert_eq!(cluster.serving().len(), 1);
        let winner = cluster.serving()[0];
        assert_eq!(cluster.primaries, BTreeSet::from([winner]));
        for i in (0..3).filter(|&i| i != winner) {
            assert_eq!(cluster.hosts[i].promoter.phase(), Phase::Standby);
            assert!(
                cluster.lost_results(i) >= 1,
                "host {i} should have lost a race"
            );
            assert_eq!(
                cluster.count(i, |a| matches!(a, Action::StartServing { .. })),
                0
            );
        }
        assert!(cluster.hosts[winner].promoter.epoch() > 0);
    }

    #[test]
    fn quorum_loss_then_reelection() {
        let mut cluster = Cluster::new(3, PromotionMode::Explicit);
        cluster.run(Duration::from_secs(3));
        let first = cluster.serving()[0];
        let first_epoch = cluster.hosts[first].promoter.epoch();
        cluster.hosts[first].partitioned = true;
        cluster.run(Duration::from_secs(5));
        // The minority host stopped, closed and demoted; a survivor took over.
        let h = &cluster.hosts[first];
        let tail: Vec<_> = h
            .actions
            .iter()
            .map(|(_, a)| a.clone())
            .skip_while(|a| *a != Action::StopServing)
            .collect();
        assert_eq!(
            &tail[..3],
            &[
                Action::StopServing,
                Action::CloseDevice,
                Action::RunSecondary
            ]
        );
        assert!(!cluster.primaries.contains(&first));
        let serving = cluster.serving();
        assert_eq!(serving.len(), 1);
        assert_ne!(serving[0], first);
        assert!(cluster.hosts[serving[0]].promoter.epoch() > first_epoch);
        // Healing the partition does not bring the old host back.
        cluster.hosts[first].partitioned = false;
        cluster.run(Duration::from_secs(5));
        assert_eq!(cluster.serving(), serving);
        assert_eq!(cluster.hosts[first].promoter.phase(), Phase::Standby);
    }

    #[test]
    fn force_io_failures_and_step_down_demote() {
        let mut cluster = Cluster::new(3, PromotionMode::Explicit);
        cluster.run(Duration::from_secs(3));
        let first = cluster.serving()[0];
        cluster.hosts[first].force_io_failures = true;
        cluster.run(Duration::from_secs(4));
        let second = cluster.serving()[0];
        assert_ne!(second, first);
        let now = cluster.now;
        cluster.input(second, Input::StepDown(StepDownReason::FatalIoError));
        assert!(!cluster.hosts[second].serving);
        // Within its cooldown the stepped-down host does not run for election again.
        cluster.run(Duration::from_secs(4));
        let third = cluster.serving()[0];
        assert_ne!(third, second);
        let retried_early = cluster.hosts[second].actions.iter().any(|(t, a)| {
            *a == Action::RunPrimary && *t > now && *t < now + Duration::from_secs(2)
        });
        assert!(!retried_early);
    }

    #[test]
    fn demote_failure_then_force_then_escalate() {
        let mut cluster = Cluster::new(3, PromotionMode::Explicit);
        cluster.run(Duration::from_secs(3));
        let first = cluster.serving()[0];
        cluster.secondary_failures = 1;
        cluster.input(first, Input::StepDown(StepDownReason::IoHang));
        cluster.run(Duration::from_secs(1));
        assert_eq!(cluster.count(first, |a| *a == Action::RunSecondaryForce), 1);
        assert!(!cluster.primaries.contains(&first), "--force demoted it");
        assert_eq!(
            cluster.count(first, |a| matches!(a, Action::Escalate { .. })),
            0
        );

        let mut cluster = Cluster::new(3, PromotionMode::Explicit);
        cluster.run(Duration::from_secs(3));
        let first = cluster.serving()[0];
        cluster.secondary_failures = 1;
        cluster.force_failures = 1;
        cluster.hosts[first].quorum = false;
        cluster.run(Duration::from_secs(1));
        assert_eq!(cluster.hosts[first].promoter.phase(), Phase::Escalated);
        assert_eq!(
            cluster.count(first, |a| matches!(a, Action::Escalate { .. })),
            1
        );
        // An escalated host ignores everything afterwards.
        cluster.run(Duration::from_secs(3));
        assert_eq!(
            cluster.count(first, |a| matches!(a, Action::Escalate { .. })),
            1
        );
    }

    #[test]
    fn restart_while_primary_adopts() {
        let now = Instant::now();
        let mut p = Promoter::new(PromoterConfig::default(), now, 5);
        let view = ClusterView {
            may_promote: false,
            local_primary: true,
            quorum: true,
            force_io_failures: false,
            peer_primary: false,
            local_disk: Some(DiskState::UpToDate),
        };
        assert_eq!(p.handle(now, Input::View(view)), vec![Action::OpenDevice]);
        let actions = p.handle(now, Input::OpenResult(OpenOutcome::Opened));
        assert!(matches!(actions[..], [Action::StartServing { epoch }] if epoch >= 5));
        assert!(p.is_serving());
    }

    #[test]
    fn startup_peer_primary_stays_standby() {
        let statuses =
            crate::status::parse_status(&crate::events2::tests::fixture("status-v9.json")).unwrap();
        let now = Instant::now();
        let mut p = Promoter::new(PromoterConfig::default(), now, 0);
        assert!(p
            .handle(now, Input::View(ClusterView::from_status(&statuses[0])))
            .is_empty());
        assert!(p
            .handle(now + Duration::from_secs(10), Input::Tick)
            .is_empty());
        assert_eq!(p.phase(), Phase::Standby);
        assert_eq!(p.next_wake(), None);
    }

    #[test]
    fn stray_primary_without_quorum_is_demoted() {
        let now = Instant::now();
        let mut p = Promoter::new(PromoterConfig::default(), now, 0);
        let view = ClusterView {
            may_promote: false,
            local_primary: true,
            quorum: false,
            force_io_failures: false,
            peer_primary: false,
            local_disk: Some(DiskState::UpToDate),
        };
        assert_eq!(p.handle(now, Input::View(view)), vec![Action::RunSecondary]);
        assert!(p
            .handle(now, Input::SecondaryResult(CommandOutcome::Done))
            .is_empty());
        // The stale view (still Primary) must not be adopted.
        assert!(p
            .handle(
                now,
                Input::View(ClusterView {
                    quorum: true,
                    ..view
                })
            )
            .is_empty());
    }

    #[test]
    fn uptodate_host_wins_over_diskless() {
        for diskless in 0..3 {
            let mut cluster = Cluster::new(3, PromotionMode::Explicit);
            let best = (diskless + 1) % 3;
            cluster.hosts[diskless].disk = Some(DiskState::Diskless);
            cluster.hosts[best].disk = Some(DiskState::UpToDate);
            cluster.hosts[(diskless + 2) % 3].disk = Some(DiskState::Inconsistent);
            cluster.run(Duration::from_secs(8));
            assert_eq!(cluster.serving(), vec![best]);
            // The others' delays ended after the winner was visible: no attempt at all.
            assert_eq!(cluster.count(diskless, |a| *a == Action::RunPrimary), 0);
            assert_eq!(
                cluster.count((diskless + 2) % 3, |a| *a == Action::RunPrimary),
                0
            );
        }
    }

    #[test]
    fn promote_delay_is_scaled() {
        let config = PromoterConfig::default();
        assert_eq!(
            config.promote_delay(Some(DiskState::UpToDate)),
            Duration::ZERO
        );
        assert_eq!(
            config.promote_delay(Some(DiskState::Consistent)),
            Duration::from_millis(500)
        );
        assert_eq!(
            config.promote_delay(Some(DiskState::Outdated)),
            Duration::from_secs(1)
        );
        assert_eq!(
            config.promote_delay(Some(DiskState::Inconsistent)),
            Duration::from_millis(1500)
        );
        assert_eq!(
            config.promote_delay(Some(DiskState::Diskless)),
            Duration::from_secs(3)
        );
        assert_eq!(config.promote_delay(None), Duration::from_secs(3));
        let slow = PromoterConfig {
            sleep_factor: 1.0,
            ..config
        };
        assert_eq!(
            slow.promote_delay(Some(DiskState::DUnknown)),
            Duration::from_secs(6)
        );
    }

    #[test]
    fn attempts_are_rate_limited() {
        let mut cluster = Cluster::new(1, PromotionMode::Explicit);
        cluster.refuse_all = true;
        cluster.run(Duration::from_secs(10));
        let times: Vec<Instant> = cluster.hosts[0]
            .actions
            .iter()
            .filter(|(_, a)| *a == Action::RunPrimary)
            .map(|(t, _)| *t)
            .collect();
        assert!(
            times.len() >= 5,
            "keeps retrying while may_promote holds: {}",
            times.len()
        );
        assert!(times.len() <= 11);
        for pair in times.windows(2) {
            assert!(pair[1] - pair[0] >= Duration::from_secs(1));
        }
        // A flood of view updates does not bypass the limit.
        let now = Instant::now();
        let mut p = Promoter::new(PromoterConfig::default(), now, 0);
        let view = ClusterView {
            may_promote: true,
            local_primary: false,
            quorum: true,
            force_io_failures: false,
            peer_primary: false,
            local_disk: Some(DiskState::UpToDate),
        };
        p.handle(now, Input::View(view));
        assert_eq!(p.handle(now, Input::Tick), vec![Action::RunPrimary]);
        p.handle(now, Input::PrimaryResult(CommandOutcome::Lost));
        // A view arriving right after the loss schedules, but not before the limit.
        let actions = p.handle(now, Input::View(view));
        assert!(
            matches!(actions[..], [Action::SchedulePromotion { at, .. }] if at == now + Duration::from_secs(1))
        );
        assert!(p
            .handle(now + Duration::from_millis(500), Input::Tick)
            .is_empty());
        assert!(p.next_wake().unwrap() >= now + Duration::from_secs(1));
    }

    #[test]
    fn step_down_while_waiting_retries_after_cooldown() {
        let now = Instant::now();
        let mut p = Promoter::new(PromoterConfig::default(), now, 0);
        let view = ClusterView {
            may_promote: true,
            local_primary: false,
            quorum: true,
            force_io_failures: false,
            peer_primary: false,
            local_disk: Some(DiskState::Diskless),
        };
        assert!(matches!(
            p.handle(now, Input::View(view))[..],
            [Action::SchedulePromotion { .. }]
        ));
        assert!(p
            .handle(now, Input::StepDown(StepDownReason::IoHang))
            .is_empty());
        assert_eq!(p.phase(), Phase::Standby);
        let until = now + Duration::from_secs(2);
        assert_eq!(p.next_wake(), Some(until));
        assert!(p
            .handle(now + Duration::from_secs(1), Input::Tick)
            .is_empty());
        assert!(matches!(
            p.handle(until, Input::Tick)[..],
            [Action::SchedulePromotion { at, .. }] if at == until + Duration::from_secs(3)
        ));
    }

    #[test]
    fn shutdown_in_standby_completes_at_once() {
        let now = Instant::now();
        let mut p = Promoter::new(PromoterConfig::default(), now, 0);
        assert_eq!(
            p.handle(now, Input::Shutdown),
            vec![Action::ShutdownComplete]
        );
        assert_eq!(p.phase(), Phase::Stopped);
    }

    #[test]
    fn config_error_backs_off_longer() {
        let now = Instant::now();
        let mut p = Promoter::new(PromoterConfig::default(), now, 0);
        let view = ClusterView {
            may_promote: true,
            local_primary: false,
            quorum: true,
            force_io_failures: false,
            peer_primary: false,
            local_disk: Some(DiskState::UpToDate),
        };
        p.handle(now, Input::View(view));
        assert_eq!(p.handle(now, Input::Tick), vec![Action::RunPrimary]);
        assert!(p
            .handle(now, Input::PrimaryResult(CommandOutcome::ConfigError))
            .is_empty());
        assert_eq!(p.next_wake(), Some(now + Duration::from_secs(5)));
    }

    #[test]
    fn timed_out_primary_is_adopted_if_it_happened() {
        let now = Instant::now();
        let mut p = Promoter::new(PromoterConfig::default(), now, 0);
        let view = ClusterView {
            may_promote: true,
            local_primary: false,
            quorum: true,
            force_io_failures: false,
            peer_primary: false,
            local_disk: Some(DiskState::UpToDate),
        };
        p.handle(now, Input::View(view));
        p.handle(now, Input::Tick);
        assert!(p
            .handle(now, Input::PrimaryResult(CommandOutcome::TimedOut))
            .is_empty());
        let primary = ClusterView {
            may_promote: false,
            local_primary: true,
            ..view
        };
        assert_eq!(
            p.handle(now, Input::View(primary)),
            vec![Action::OpenDevice]
        );
    }

    #[test]
    fn shutdown_while_serving_demotes_then_completes() {
        let mut cluster = Cluster::new(2, PromotionMode::Explicit);
        cluster.run(Duration::from_secs(2));
        let first = cluster.serving()[0];
        cluster.input(first, Input::Shutdown);
        cluster.run(Duration::from_secs(1));
        let actions: Vec<_> = cluster.hosts[first]
            .actions
            .iter()
            .map(|(_, a)| a.clone())
            .collect();
        let tail = &actions[actions.len() - 4..];
        assert_eq!(
            tail,
            &[
                Action::StopServing,
                Action::CloseDevice,
                Action::RunSecondary,
                Action::ShutdownComplete
            ]
        );
        assert_eq!(cluster.hosts[first].promoter.phase(), Phase::Stopped);
        // The other host takes over.
        cluster.run(Duration::from_secs(3));
        assert_eq!(cluster.serving(), vec![1 - first]);
    }

    #[test]
    fn step_down_during_promotion_never_serves() {
        let now = Instant::now();
        let mut p = Promoter::new(PromoterConfig::default(), now, 0);
        let view = ClusterView {
            may_promote: true,
            local_primary: false,
            quorum: true,
            force_io_failures: false,
            peer_primary: false,
            local_disk: Some(DiskState::UpToDate),
        };
        p.handle(now, Input::View(view));
        assert_eq!(p.handle(now, Input::Tick), vec![Action::RunPrimary]);
        assert!(p
            .handle(now, Input::StepDown(StepDownReason::FatalIoError))
            .is_empty());
        assert_eq!(
            p.handle(now, Input::PrimaryResult(CommandOutcome::Done)),
            vec![Action::RunSecondary]
        );
        assert!(p
            .handle(now, Input::SecondaryResult(CommandOutcome::Done))
            .is_empty());
        assert_eq!(p.phase(), Phase::Standby);
        // Quorum lost while opening: close and demote instead of serving.
        let later = now + Duration::from_secs(10);
        p.handle(
            later,
            Input::View(ClusterView {
                local_primary: false,
                ..view
            }),
        );
        p.handle(later, Input::Tick);
        assert_eq!(p.phase(), Phase::Promoting);
        p.handle(later, Input::PrimaryResult(CommandOutcome::Done));
        p.handle(
            later,
            Input::View(ClusterView {
                quorum: false,
                may_promote: false,
                local_primary: true,
                ..view
            }),
        );
        assert_eq!(
            p.handle(later, Input::OpenResult(OpenOutcome::Opened)),
            vec![Action::CloseDevice, Action::RunSecondary]
        );
    }

    #[test]
    fn serving_ignores_lagging_view_until_primary_seen() {
        let now = Instant::now();
        let mut p = Promoter::new(PromoterConfig::default(), now, 0);
        let view = ClusterView {
            may_promote: true,
            local_primary: false,
            quorum: true,
            force_io_failures: false,
            peer_primary: false,
            local_disk: Some(DiskState::UpToDate),
        };
        p.handle(now, Input::View(view));
        p.handle(now, Input::Tick);
        p.handle(now, Input::PrimaryResult(CommandOutcome::Done));
        p.handle(now, Input::OpenResult(OpenOutcome::Opened));
        assert!(p.is_serving());
        // events2 has not delivered role:Primary yet: not a forced Secondary.
        assert!(p
            .handle(
                now,
                Input::View(ClusterView {
                    may_promote: false,
                    ..view
                })
            )
            .is_empty());
        let primary = ClusterView {
            may_promote: false,
            local_primary: true,
            ..view
        };
        assert!(p.handle(now, Input::View(primary)).is_empty());
        // Now a Secondary role is DRBD forcing us down.
        assert_eq!(
            p.handle(
                now,
                Input::View(ClusterView {
                    local_primary: false,
                    ..primary
                })
            ),
            vec![
                Action::StopServing,
                Action::CloseDevice,
                Action::RunSecondary
            ]
        );
    }

    #[test]
    fn auto_promote_race_and_demotion_by_close() {
        let mut cluster = Cluster::new(3, PromotionMode::AutoPromote);
        cluster.run(Duration::from_secs(3));
        assert_eq!(cluster.serving().len(), 1);
        let first = cluster.serving()[0];
        for i in 0..3 {
            assert_eq!(
                cluster.count(i, |a| matches!(
                    a,
                    Action::RunPrimary | Action::RunSecondary
                )),
                0
            );
        }
        let losers: usize = (0..3)
            .filter(|&i| i != first)
            .map(|i| cluster.count(i, |a| *a == Action::OpenDevice))
            .sum();
        assert!(losers >= 2, "the others tried to open and got EROFS");
        cluster.hosts[first].partitioned = true;
        cluster.run(Duration::from_secs(5));
        assert!(!cluster.primaries.contains(&first), "closing demoted it");
        let serving = cluster.serving();
        assert_eq!(serving.len(), 1);
        assert_ne!(serving[0], first);
        assert_eq!(cluster.count(first, |a| *a == Action::RunSecondary), 0);
    }

    #[test]
    fn epochs_grow_within_a_process() {
        let now = Instant::now();
        let mut p = Promoter::new(PromoterConfig::default(), now, 1_000);
        assert_eq!(p.next_epoch(now), 1_000);
        assert_eq!(p.next_epoch(now), 1_001);
        assert_eq!(p.next_epoch(now + Duration::from_secs(2)), 3_000);
    }

    #[test]
    fn open_errno_classification() {
        assert_eq!(OpenOutcome::from_errno(libc::EROFS), OpenOutcome::Lost);
        assert_eq!(
            OpenOutcome::from_errno(libc::EMEDIUMTYPE),
            OpenOutcome::Lost
        );
        assert_eq!(
            OpenOutcome::from_errno(libc::ENOTRECOVERABLE),
            OpenOutcome::Failed
        );
        assert_eq!(OpenOutcome::from_errno(libc::ENOENT), OpenOutcome::Failed);
    }

    #[test]
    fn view_requires_complete_initial_state() {
        let mut model =
            crate::model::ResourceModel::new("r0", crate::model::ModelOptions::default());
        let text = crate::events2::tests::fixture("events2-v84-primary-now.txt");
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            model.apply(&crate::events2::parse_line(line));
            let view = ClusterView::from_view(&model.view());
            assert_eq!(view.is_some(), lines.peek().is_none(), "after {line}");
        }
        let view = ClusterView::from_view(&model.view()).unwrap();
        assert!(view.local_primary && view.quorum && !view.peer_primary);
    }
}
