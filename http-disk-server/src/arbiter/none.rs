//! The `none` arbiter: this server always holds the role. For tests and
//! benchmarks with a single server; nothing prevents two servers from writing.

use std::time::Duration;

use super::{Arbiter, ArbiterContext, ArbiterFuture, Grant};

/// After a step-down, how long to stay standby before serving again.
const RESUME_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct NoArbiter;

impl Arbiter for NoArbiter {
    fn name(&self) -> &'static str {
        "none"
    }

    fn run(self: Box<Self>, mut ctx: ArbiterContext) -> ArbiterFuture {
        Box::pin(async move {
            let mut epoch = 1;
            ctx.publish(Grant::Serving { epoch });
            loop {
                tokio::select! {
                    _ = super::shutdown_signal(&mut ctx.shutdown) => break,
                    req = ctx.step_down.recv() => {
                        let Some(req) = req else { break };
                        if req.epoch != epoch {
                            continue;
                        }
                        ctx.publish(Grant::standby(format!(
                            "stepped down because {}; serving again in {RESUME_AFTER:?}", req.cause
                        )));
                        tokio::select! {
                            _ = super::shutdown_signal(&mut ctx.shutdown) => break,
                            _ = tokio::time::sleep(RESUME_AFTER) => {}
                        }
                        epoch += 1;
                        ctx.publish(Grant::Serving { epoch });
                    }
                }
            }
            ctx.publish(Grant::standby("shutting down"));
            Ok(())
        })
    }
}
