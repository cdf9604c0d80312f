//! The HTTP upstream with failover across the configured block servers.
//!
//! Requests go to the *current* server over pooled keep-alive connections.
//! When an attempt fails in a way another server might not (connect error,
//! reset, timeout, short body, 503, any other 5xx), the request does not fail:
//! it triggers a probe round and is re-sent to the server the round picks,
//! until its deadline; then it fails with `EIO`. A 4xx is the request's own
//! fault and fails at once (`EINVAL`). Writes are safe to re-send: each
//! carries its offset and data, and NBD gives no ordering promise between
//! requests in flight at the same time. One hazard remains and is not ours to
//! solve here: a write abandoned on a *hung* server (timeout, no answer) may
//! still be applied if that server resumes; only fencing of the old server
//! (DRBD demotion, the file arbiter's lock) keeps it from landing after the
//! re-sent copy.
//!
//! # Probe rounds
//!
//! `HEAD /` to every configured URL in parallel (plus a hinted URL at once,
//! even one not in the list), each bounded by the probe timeout. A server
//! answering 200 is a candidate; the highest `x-heartbeat-epoch` wins (a
//! reference server sends none and counts as epoch 0); ties go to the earlier
//! URL in the list. Hints (`x-heartbeat-serving-url` on a standby's 503) not
//! yet probed are probed in a second wave. Once a candidate is known, the
//! round waits only [`CANDIDATE_GRACE`] more for slower answers, so a hung old
//! server does not hold up the switch.
//!
//! Rounds are single-flight: failing requests queue on one lock, and a
//! request whose failure predates the start of the last finished round does
//! not probe again: it uses that round's verdict. Between fruitless rounds a
//! request backs off 20 ms, doubling to 200 ms.
//!
//! # Timeouts
//!
//! * connect: 200 ms. On loopback or a LAN a connect completes in well under
//!   a millisecond or is refused at once; 200 ms only matters for a host that
//!   drops packets, and then we want to move on quickly.
//! * per attempt: 500 ms plus the transfer time at 50 MB/s
//!   (`len / 50 MB/s`, 0.7 s for a 32 MiB request). A healthy server answers a
//!   statefile-sized request in well under a millisecond, and the serving
//!   server's own durable write (fdatasync on DRBD protocol C) takes a few
//!   milliseconds; 500 ms of silence therefore means a hung or partitioned
//!   host (no RST), detected within half a second rather than the reference's
//!   3 s.
//! * probe: connect timeout + 300 ms.
//! * per request: the [`FailoverDeadline`], derived from XHA's budget.
//!
//! # Response polling
//!
//! On by default (`--upstream-poll-us`, 500 us; 0 turns it off): a lone request polls the
//! serving server's connection for its answer for up to
//! [`HttpUpstreamConfig::response_poll`] (see [`super::http1::PollBudget`]);
//! the budget is learnt per serving server, so a failover starts afresh. Probes never poll but count as in flight.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use heartbeat_wire::auth::PoolKey;

use crate::activity::Activity;

use super::http1::{Endpoint, Pool, Request, Response, ResponsePoll};
use super::{Upstream, UpstreamError};

/// What a probe's non-200 answer means, for the log line that lists them.
fn probe_status_hint(status: u16) -> &'static str {
    match status {
        401 => " (the pool key was refused: do both hosts have the same key file?)",
        429 => " (overloaded: its replay cache is full of recent requests; lower the request rate or raise its --auth-replay-capacity)",
        503 => " (standby: not the serving host)",
        _ => "",
    }
}

/// After a probe round has a candidate, how much longer it waits for others.
pub const CANDIDATE_GRACE: Duration = Duration::from_millis(50);

/// Default cap on polling for an answer, in microseconds
/// (`--upstream-poll-us`). A loopback or same-host answer takes 50 to
/// 300 us, a DRBD protocol C write about a millisecond (never polled under
/// this cap). Whether polling pays depends on the hypervisor
/// (BENCHMARKS.md): on the 2-vCPU VM of 2026-12-03 it cut qd1 writes by
/// 40-100 us and reads by up to 40 us over both `unix:` and loopback TCP;
/// on the VM of 2026-11-23 it had added ~50 us to loopback TCP writes.
/// `--upstream-poll-us 0` turns it off.
pub const DEFAULT_RESPONSE_POLL_US: u64 = 500;

/// The per-request deadline, derived from XHA's statefile budget.
///
/// A host's statefile cycle is, in the worst case, 1 write + 3 attempts of
/// (N+1) reads + 3 s of sleeps, and it must fit in the statefile watchdog
/// `Ws` (75 s with the default HA timeout of 60 s), with one cycle interval
/// `t2` (3 s) as margin. With every request taking its full deadline `d`:
/// `(3N + 4) d + t2 <= Ws`, so `d = (Ws - t2) / (3N + 4)`. N is the number of
/// hosts, taken as the number of URLs. Clamped to [2 s, 10 s]: below 2 s a
/// failover (new primary promoted, server started) has no time to complete;
/// above 10 s nothing is gained for small pools.
/// N=1: 10 s (clamped from 10.3), N=3: 5.5 s, N=8: 2.6 s, N>=17: 2 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailoverDeadline(pub Duration);

impl FailoverDeadline {
    pub const WS: Duration = Duration::from_secs(75);
    pub const T2: Duration = Duration::from_secs(3);
    pub const MIN: Duration = Duration::from_secs(2);
    pub const MAX: Duration = Duration::from_secs(10);

    pub fn for_hosts(n: usize) -> Self {
        let n = n.max(1) as u32;
        let d = (Self::WS - Self::T2) / (3 * n + 4);
        Self(d.clamp(Self::MIN, Self::MAX))
    }
}

#[derive(Debug, Clone)]
pub struct HttpUpstreamConfig {
    /// The volume (NBD export name), for logs and errors.
    pub volume: String,
    pub urls: Vec<String>,
    pub connect_timeout: Duration,
    /// Fixed part of the per-attempt timeout.
    pub request_timeout: Duration,
    /// Bytes per second assumed for the size part of the attempt timeout.
    pub transfer_rate: u64,
    pub probe_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Pool key every request (probes included) is signed with; None sends
    /// unsigned requests (reference servers, compatibility mode).
    pub auth: Option<Arc<PoolKey>>,
    /// TLS settings (trusted CA) for `https://` URLs; required when any URL
    /// is `https://`.
    pub tls: Option<super::http1::TlsClientConfig>,
    /// Longest a lone request polls a plain connection for its answer before
    /// sleeping in the runtime; zero never polls.
    pub response_poll: Duration,
    /// What the NBD side is doing: polling only while it allows.
    pub activity: Arc<Activity>,
}

impl HttpUpstreamConfig {
    pub fn new(volume: &str, urls: Vec<String>) -> Self {
        let connect_timeout = Duration::from_millis(200);
        Self {
            volume: volume.to_owned(),
            urls,
            connect_timeout,
            request_timeout: Duration::from_millis(500),
            transfer_rate: 50_000_000,
            probe_timeout: connect_timeout + Duration::from_millis(300),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            auth: None,
            tls: None,
            response_poll: Duration::from_micros(DEFAULT_RESPONSE_POLL_US),
            activity: Arc::default(),
        }
    }

    fn attempt_timeout(&self, bytes: u64) -> Duration {
        let rate = self.transfer_rate.max(1);
        self.request_timeout + Duration::from_micros(bytes.saturating_mul(1_000_000) / rate)
    }
}

/// A server requests can go to.
#[derive(Debug)]
struct Target {
    endpoint: Endpoint,
    epoch: u64,
    pool: Pool,
}

#[derive(Debug, Default)]
struct Current {
    target: Option<Arc<Target>>,
    /// Bumped whenever `target` changes.
    generation: u64,
}

#[derive(Debug)]
struct ProbeRecord {
    /// When the last finished round started.
    last_round_started: Option<Instant>,
}

/// What a probe round found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeWinner {
    pub url: String,
    pub epoch: u64,
    pub size: Option<u64>,
}

#[derive(Debug)]
pub struct HttpUpstream {
    config: HttpUpstreamConfig,
    endpoints: Vec<Endpoint>,
    current: Mutex<Current>,
    probe: tokio::sync::Mutex<ProbeRecord>,
    /// Upstream exchanges in flight, probes included: polling for an answer
    /// is only for a lone one.
    in_flight: Arc<AtomicUsize>,
}

impl HttpUpstream {
    pub fn new(config: HttpUpstreamConfig) -> Result<Self, String> {
        if config.urls.is_empty() {
            return Err(format!(
                "volume {}: no upstream URL given; pass --urls http://HOST:PORT[,...]",
                config.volume
            ));
        }
        let endpoints = config
            .urls
            .iter()
            .map(|u| Endpoint::parse(u).map_err(|e| format!("volume {}: {e}", config.volume)))
            .collect::<Result<Vec<_>, _>>()?;
        if config.tls.is_none() {
            if let Some(ep) = endpoints.iter().find(|e| e.tls) {
                return Err(format!(
                    "volume {}: {} is an https URL: pass --tls-ca with the CA that signed the servers' certificates",
                    config.volume, ep.url
                ));
            }
        }
        Ok(Self {
            config,
            endpoints,
            current: Mutex::new(Current::default()),
            probe: tokio::sync::Mutex::new(ProbeRecord {
                last_round_started: None,
            }),
            in_flight: Arc::default(),
        })
    }

    pub fn config(&self) -> &HttpUpstreamConfig {
        &self.config
    }

    /// URL of the server currently used, if any.
    pub fn current_url(&self) -> Option<String> {
        self.snapshot().0.map(|t| t.endpoint.url.clone())
    }

    fn snapshot(&self) -> (Option<Arc<Target>>, u64) {
        let c = self.current.lock().unwrap_or_else(|e| e.into_inner());
        (c.target.clone(), c.generation)
    }

    fn urls_text(&self) -> String {
        self.config.urls.join(",")
    }

    /// Find the serving server and its size, probing until `deadline`. Used
    /// at start when no `--device-size` is given.
    pub async fn discover(&self, deadline: Instant) -> Result<u64, UpstreamError> {
        let started = Instant::now();
        let mut backoff = self.config.backoff_min;
        let mut last_error = String::from("no probe round finished");
        loop {
            let (_, generation) = self.snapshot();
            match self
                .probe_and_switch(generation, None, Instant::now(), deadline)
                .await
            {
                Ok(true) => {
                    if let Some(size) = self.head_size(deadline).await {
                        return Ok(size);
                    }
                }
                Ok(false) => {}
                Err(e) => last_error = e,
            }
            if Instant::now() >= deadline {
                return Err(UpstreamError::Unavailable {
                    volume: self.config.volume.clone(),
                    what: "size discovery (HEAD /)".into(),
                    waited_ms: started.elapsed().as_millis(),
                    last_error,
                    urls: self.urls_text(),
                });
            }
            tokio::time::sleep(backoff.min(deadline - Instant::now())).await;
            backoff = (backoff * 2).min(self.config.backoff_max);
        }
    }

    async fn head_size(&self, deadline: Instant) -> Option<u64> {
        let (target, _) = self.snapshot();
        let target = target?;
        let attempt = deadline.min(Instant::now() + self.config.probe_timeout);
        let resp = target
            .pool
            .send(
                &target.endpoint,
                &Request::Head,
                self.config.auth.as_deref(),
                self.config.connect_timeout,
                attempt,
            )
            .await
            .ok()?;
        (resp.status == 200)
            .then_some(resp.content_length)
            .flatten()
    }

    /// Run one request with failover until `deadline`.
    async fn execute(
        &self,
        request: Request<'_>,
        deadline: Instant,
    ) -> Result<Response, UpstreamError> {
        let started = Instant::now();
        let mut backoff = self.config.backoff_min;
        let mut last_error = String::from("no serving server known yet");
        loop {
            let (target, generation) = self.snapshot();
            let mut hint = None;
            if let Some(target) = target {
                let attempt_deadline = deadline
                    .min(Instant::now() + self.config.attempt_timeout(request.payload_len()));
                let result = target
                    .pool
                    .send(
                        &target.endpoint,
                        &request,
                        self.config.auth.as_deref(),
                        self.config.connect_timeout,
                        attempt_deadline,
                    )
                    .await;
                match result {
                    Ok(resp) => match classify(&request, &resp) {
                        Verdict::Done => return Ok(resp),
                        Verdict::Rejected(detail) => {
                            crate::metrics::metrics()
                                .upstream_error(crate::metrics::UpstreamErrorKind::Rejected);
                            return Err(UpstreamError::Rejected {
                                volume: self.config.volume.clone(),
                                url: target.endpoint.url.clone(),
                                what: request.describe(),
                                status: resp.status,
                                detail,
                            });
                        }
                        Verdict::Retry(why) => {
                            crate::metrics::metrics()
                                .upstream_error(crate::metrics::UpstreamErrorKind::Unavailable);
                            last_error = format!("{}: {why}", target.endpoint.url);
                            hint = resp.serving_url.clone();
                        }
                    },
                    Err(e) => {
                        crate::metrics::metrics()
                            .upstream_error(crate::metrics::UpstreamErrorKind::Transport);
                        last_error = format!("{}: {e}", target.endpoint.url);
                        target.pool.clear();
                    }
                }
                debug!(volume = %self.config.volume, request = %request.describe(), error = %last_error, "attempt failed; failing over");
            }
            let failed_at = Instant::now();
            if failed_at >= deadline {
                crate::metrics::metrics()
                    .upstream_error(crate::metrics::UpstreamErrorKind::Deadline);
                return Err(UpstreamError::Unavailable {
                    volume: self.config.volume.clone(),
                    what: request.describe(),
                    waited_ms: started.elapsed().as_millis(),
                    last_error,
                    urls: self.urls_text(),
                });
            }
            match self
                .probe_and_switch(generation, hint, failed_at, deadline)
                .await
            {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => last_error = e,
            }
            let now = Instant::now();
            if now >= deadline {
                continue; // reports Unavailable above
            }
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(self.config.backoff_max);
        }
    }

    /// Single-flight probe. `Ok(true)`: a server is now current (retry at
    /// once); `Ok(false)`: nothing found (back off); `Err`: what the round saw.
    async fn probe_and_switch(
        &self,
        seen_generation: u64,
        hint: Option<String>,
        failed_at: Instant,
        deadline: Instant,
    ) -> Result<bool, String> {
        let mut record = self.probe.lock().await;
        let (current, generation) = self.snapshot();
        if generation != seen_generation {
            return Ok(true);
        }
        if record.last_round_started.is_some_and(|s| s >= failed_at) {
            // A round that began after this failure already gave its verdict.
            return Ok(false);
        }
        let round_started = Instant::now();
        let round_deadline = deadline.min(round_started + self.config.probe_timeout * 2);
        let outcome = self.probe_round(hint, round_deadline).await;
        record.last_round_started = Some(round_started);
        match outcome {
            Ok(winner) => {
                let mut c = self.current.lock().unwrap_or_else(|e| e.into_inner());
                let old_url = current.as_ref().map(|t| t.endpoint.url.clone());
                let same = old_url.as_deref() == Some(winner.url.as_str());
                if same {
                    // The same server still claims to serve: the failure was
                    // its own (a 5xx, a reset). Back off before retrying so a
                    // sick server is not hammered; stale idle connections
                    // were already retried in the pool.
                    return Ok(false);
                }
                let endpoint =
                    Endpoint::parse(&winner.url).map_err(|e| format!("bad hinted URL: {e}"))?;
                c.target = Some(Arc::new(Target {
                    endpoint,
                    epoch: winner.epoch,
                    pool: Pool::new(
                        self.config.tls.clone(),
                        ResponsePoll::new(
                            self.config.response_poll,
                            self.in_flight.clone(),
                            self.config.activity.clone(),
                        ),
                    ),
                }));
                c.generation += 1;
                let took = failed_at.elapsed();
                crate::metrics::metrics().upstream_selected(
                    &winner.url,
                    winner.epoch,
                    old_url.is_some().then_some(took),
                );
                match old_url {
                    Some(old) => info!(
                        volume = %self.config.volume,
                        old_url = %old,
                        new_url = %winner.url,
                        epoch = winner.epoch,
                        duration_ms = took.as_millis() as u64,
                        "failover: now serving from {}", winner.url
                    ),
                    None => info!(
                        volume = %self.config.volume,
                        url = %winner.url,
                        epoch = winner.epoch,
                        "upstream selected: {}", winner.url
                    ),
                }
                if let (Some(size), Some(prev)) = (winner.size, current.as_ref()) {
                    debug!(volume = %self.config.volume, size, previous_epoch = prev.epoch, "new server size");
                }
                Ok(true)
            }
            Err(summary) => {
                crate::metrics::metrics()
                    .upstream_error(crate::metrics::UpstreamErrorKind::NoServer);
                warn!(volume = %self.config.volume, "no serving http-disk-server found: {summary}");
                Err(summary)
            }
        }
    }

    /// Probe every URL (and hints) once; the best server answering 200.
    async fn probe_round(
        &self,
        hint: Option<String>,
        deadline: Instant,
    ) -> Result<ProbeWinner, String> {
        let mut probed: Vec<String> = Vec::new();
        let mut wave: Vec<Endpoint> = Vec::new();
        let push = |ep: Endpoint, probed: &mut Vec<String>, wave: &mut Vec<Endpoint>| {
            if !probed.contains(&ep.url) {
                probed.push(ep.url.clone());
                wave.push(ep);
            }
        };
        if let Some(h) = hint.as_deref().and_then(|h| Endpoint::parse(h).ok()) {
            push(h, &mut probed, &mut wave);
        }
        for ep in &self.endpoints {
            push(ep.clone(), &mut probed, &mut wave);
        }
        let mut candidates: Vec<(usize, ProbeWinner)> = Vec::new();
        let mut failures: Vec<String> = Vec::new();
        for _ in 0..3 {
            if wave.is_empty() {
                break;
            }
            let mut set = JoinSet::new();
            for ep in wave.drain(..) {
                let connect_timeout = self.config.connect_timeout;
                let auth = self.config.auth.clone();
                let tls = self.config.tls.clone();
                let in_flight = self.in_flight.clone();
                let probe_deadline = deadline.min(Instant::now() + self.config.probe_timeout);
                set.spawn(async move {
                    // A probe is not latency-critical, and several run at once.
                    let pool = Pool::new(
                        tls,
                        ResponsePoll::new(Duration::ZERO, in_flight, Arc::default()),
                    );
                    let r = pool
                        .send(
                            &ep,
                            &Request::Head,
                            auth.as_deref(),
                            connect_timeout,
                            probe_deadline,
                        )
                        .await;
                    (ep, r)
                });
            }
            let mut grace_deadline: Option<Instant> = None;
            loop {
                let next = match grace_deadline {
                    Some(g) => match tokio::time::timeout_at(g, set.join_next()).await {
                        Ok(n) => n,
                        Err(_) => break,
                    },
                    None => set.join_next().await,
                };
                let Some(joined) = next else { break };
                let Ok((ep, result)) = joined else { continue };
                match result {
                    Ok(resp) if resp.status == 200 && resp.role.as_deref() != Some("standby") => {
                        let order = self
                            .endpoints
                            .iter()
                            .position(|e| e.url == ep.url)
                            .unwrap_or(usize::MAX);
                        candidates.push((
                            order,
                            ProbeWinner {
                                url: ep.url.clone(),
                                epoch: resp.epoch.unwrap_or(0),
                                size: resp.content_length,
                            },
                        ));
                        grace_deadline.get_or_insert_with(|| Instant::now() + CANDIDATE_GRACE);
                    }
                    Ok(resp) => {
                        failures.push(format!(
                            "{} answered {}{}",
                            ep.url,
                            resp.status,
                            probe_status_hint(resp.status)
                        ));
                        if let Some(h) = resp
                            .serving_url
                            .as_deref()
                            .and_then(|h| Endpoint::parse(h).ok())
                        {
                            push(h, &mut probed, &mut wave);
                        }
                    }
                    Err(e) => failures.push(format!("{}: {e}", ep.url)),
                }
            }
            set.abort_all();
            if !candidates.is_empty() {
                break;
            }
        }
        candidates
            .into_iter()
            .max_by(|(ao, a), (bo, b)| a.epoch.cmp(&b.epoch).then(bo.cmp(ao)))
            .map(|(_, w)| w)
            .ok_or_else(|| failures.join("; "))
    }
}

enum Verdict {
    Done,
    Rejected(String),
    Retry(String),
}

fn classify(request: &Request<'_>, resp: &Response) -> Verdict {
    let body_text = || {
        String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
            .trim()
            .to_owned()
    };
    match resp.status {
        200..=299 => {
            if let Request::Get { len, .. } = request {
                if resp.body.len() != *len as usize {
                    return Verdict::Retry(format!(
                        "short read: asked {len} bytes, got {}",
                        resp.body.len()
                    ));
                }
            }
            Verdict::Done
        }
        408 | 429 => Verdict::Retry(format!("HTTP {}", resp.status)),
        400..=499 => Verdict::Rejected(body_text()),
        status => Verdict::Retry(format!("HTTP {status} {}", body_text())),
    }
}

impl Upstream for HttpUpstream {
    async fn read_at(
        &self,
        offset: u64,
        len: u32,
        deadline: Instant,
    ) -> Result<Vec<u8>, UpstreamError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let resp = self.execute(Request::Get { offset, len }, deadline).await?;
        Ok(resp.body)
    }

    async fn write_at<'a>(
        &'a self,
        offset: u64,
        data: &'a [u8],
        deadline: Instant,
    ) -> Result<(), UpstreamError> {
        if data.is_empty() {
            return Ok(());
        }
        self.execute(Request::Put { offset, data }, deadline)
            .await?;
        Ok(())
    }

    async fn flush(&self, _deadline: Instant) -> Result<(), UpstreamError> {
        // Every write was durable on the server before it was acknowledged,
        // and nothing is cached here: there is nothing to flush.
        Ok(())
    }
}

#[cfg(test)]
mod tests;
