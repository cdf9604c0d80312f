//! The real multi-threaded loop (`run_emulation`, wall clock) against a
//! fault-injecting target.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use xha_shim::emulator::{emulated_host_uuid, HostConfig, HostEvent, Verdict};
use xha_shim::heartbeat::{run_emulation, EmulationConfig, FaultPlan, FaultyTarget, RealClock};
use xha_shim::pool::{initialise, InitSpec};
use xha_shim::statefile::{StatefileUuid, STATEFILE_SIZE};
use xha_shim::target::{AlignedBuf, MemTarget, StatefileTarget};
use xha_shim::timeouts::Timeouts;

const MS: fn(u64) -> Duration = Duration::from_millis;

/// Cycle every 100 ms; T2 and Ws as given (warning at T2/2).
fn host(i: usize, n: usize, sf_timeout: Duration, watchdog: Duration) -> HostConfig {
    HostConfig {
        index: i,
        uuid: emulated_host_uuid(i),
        config_hosts: n,
        timeouts: Timeouts::derive(60).with_overrides(
            Some(MS(100)),
            Some(sf_timeout),
            Some(watchdog),
        ),
        accelerated: false,
        jitter: MS(20),
        expected_gen_uuid: None,
    }
}

fn pool(n: usize) -> MemTarget {
    let mut t = MemTarget::new(STATEFILE_SIZE as usize);
    initialise(&mut t, &InitSpec::emulated(n, StatefileUuid::random())).unwrap();
    t
}

/// The wrapper reads the clock only to decide whether faults are active;
/// with `from` zero a fresh clock is as good as the run's.
fn faulty(inner: MemTarget, plan: FaultPlan) -> Box<dyn StatefileTarget> {
    Box::new(FaultyTarget {
        inner,
        clock: Arc::new(RealClock::new()),
        plan,
    })
}

#[test]
fn slow_writes_warn_and_slow_reads_fence() {
    let image = pool(3);
    let targets = vec![
        // Host 0: 2.2 s writes, over T2/2 = 2 s, but its cycle (~2.3 s)
        // fits both T2 = 4 s and the watchdog (Ws = 6 s).
        faulty(
            image.clone(),
            FaultPlan {
                write_delay: MS(2200),
                ..FaultPlan::default()
            },
        ),
        // Host 1: 1.6 s reads, each under T2/2; 4 reads = 6.4 s per cycle,
        // more than Ws = 6 s.
        faulty(
            image.clone(),
            FaultPlan {
                read_delay: MS(1600),
                ..FaultPlan::default()
            },
        ),
        Box::new(image.clone()),
    ];
    // Long enough that late wakeups on a loaded machine (every sleep
    // overshoots) stay inside the margins: 400 ms between a 1.6 s read and
    // T2/2, 400 ms between host 1's cycle and Ws.
    let hosts = (0..3).map(|i| host(i, 3, MS(4000), MS(6000))).collect();
    let report = run_emulation(
        EmulationConfig {
            hosts,
            duration: MS(10000),
        },
        targets,
    );
    let h = &report.hosts;
    assert_eq!(h[0].verdict, Verdict::LatencyWarning, "{:#?}", h[0]);
    assert!(h[0].write_latency.max_ms >= 2200.0);
    assert_eq!(h[1].verdict, Verdict::WouldFence, "{:#?}", h[1]);
    assert!(h[1].read_latency.p50_ms >= 1600.0);
    assert!(h[1].read_latency.max_ms < 2000.0, "each call under T2/2");
    assert!(report.any_hurt);
    assert!(h[2].cycles >= 10, "{:#?}", h[2]);
    // Host 2 is fine itself, but sees host 1 leave its sfdomain.
    assert!(!h[2].verdict.is_hurt(), "{:#?}", h[2]);
    assert!(h[2].sf_access_at_end);
    assert!(
        h[2].events
            .iter()
            .any(|e| matches!(e, HostEvent::LeftSfdomain { host: 1, .. })),
        "{:#?}",
        h[2]
    );
}

/// A device whose reads never come back after a while (no I/O timeout).
struct HangingTarget {
    inner: MemTarget,
    reads_left: usize,
}

impl StatefileTarget for HangingTarget {
    fn read_at(&mut self, buf: &mut AlignedBuf, offset: u64) -> io::Result<()> {
        if self.reads_left == 0 {
            std::thread::sleep(Duration::from_secs(3600));
        }
        self.reads_left -= 1;
        self.inner.read_at(buf, offset)
    }
    fn write_at(&mut self, buf: &AlignedBuf, offset: u64) -> io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn describe(&self) -> String {
        "hanging".into()
    }
}

#[test]
fn a_hung_call_is_judged_while_it_hangs() {
    let image = pool(2);
    let targets: Vec<Box<dyn StatefileTarget>> = vec![
        Box::new(image.clone()),
        Box::new(HangingTarget {
            inner: image.clone(),
            reads_left: 9,
        }),
    ];
    let hosts = (0..2).map(|i| host(i, 2, MS(1000), MS(1200))).collect();
    let started = std::time::Instant::now();
    let report = run_emulation(
        EmulationConfig {
            hosts,
            duration: MS(3000),
        },
        targets,
    );
    // The run ends (within its grace) although host 1 never returns.
    assert!(started.elapsed() < Duration::from_secs(8));
    let h1 = &report.hosts[1];
    assert_eq!(h1.verdict, Verdict::WouldFence, "{h1:#?}");
    assert!(h1.stuck_in_io_ms.unwrap() >= 1000, "{h1:#?}");
    // Host 0 saw host 1's sequence stop and dropped it from its sfdomain.
    let h0 = &report.hosts[0];
    assert_eq!(h0.sfdomain_at_end.to_string(), "0", "{h0:#?}");
    assert!(report.to_table().contains("stuck in a call"));
}
