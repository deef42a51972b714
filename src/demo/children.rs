//! The demo's children as one set: started with fresh ports (again if a port was taken),
//! checked for early deaths, and stopped tier by tier (router, reporters, engines, NATS) so
//! each can still reach what it depends on while it shuts down.

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::procs::{self, Proc, Stopped};
use super::DemoError;

/// Every child process of the demo.
#[derive(Debug, Default)]
pub(super) struct Children {
    pub(super) procs: Vec<Proc>,
}

/// Tiers: stopped highest first.
pub(super) const TIER_NATS: u8 = 0;
pub(super) const TIER_ENGINE: u8 = 1;
pub(super) const TIER_REPORTER: u8 = 2;
pub(super) const TIER_ROUTER: u8 = 3;

/// How many times a child that binds ports is started with fresh ports before giving up.
const START_ATTEMPTS: u32 = 3;

impl Children {
    /// Fails if any child has died.
    pub(super) fn check_all(&mut self) -> Result<(), DemoError> {
        self.procs.iter_mut().try_for_each(Proc::check_alive)
    }

    /// Stops the children of `tier` together.
    pub(super) async fn stop_tier(
        &mut self,
        tier: u8,
        grace: Duration,
        force: &CancellationToken,
    ) -> Vec<(String, Stopped)> {
        let (now, rest): (Vec<Proc>, Vec<Proc>) = std::mem::take(&mut self.procs)
            .into_iter()
            .partition(|p| p.tier == tier);
        self.procs = rest;
        futures::future::join_all(now.into_iter().map(|p| async move {
            let name = p.name.clone();
            (name, p.stop(grace, force).await)
        }))
        .await
    }

    /// Stops everything, tier by tier (router, reporters, engines, NATS), each tier at once,
    /// and says how each child ended.
    pub(super) async fn stop_all(&mut self, grace: Duration, force: &CancellationToken) {
        let n = self.procs.len();
        let mut ended = Vec::new();
        while let Some(top) = self.procs.iter().map(|p| p.tier).max() {
            ended.extend(self.stop_tier(top, grace, force).await);
        }
        if n == 0 {
            return;
        }
        let count = |want: fn(&Stopped) -> bool| ended.iter().filter(|(_, s)| want(s)).count();
        let clean = count(|s| *s == Stopped::Clean);
        let killed = count(|s| *s == Stopped::Killed);
        let dead: Vec<String> = ended
            .iter()
            .filter_map(|(name, s)| match s {
                Stopped::Dead(status) => Some(format!("{name} ({status})")),
                _ => None,
            })
            .collect();
        println!(
            "stopped {n} child processes: {clean} exited cleanly on SIGTERM, {killed} killed, {} had \
             already exited{}",
            dead.len(),
            if dead.is_empty() { String::new() } else { format!(": {}", dead.join(", ")) }
        );
    }

    /// Starts a child that binds loopback ports and waits until it is ready. Ports come from
    /// [`free_port`], so another process can take one before the child binds it; a child that
    /// dies while starting is started again with fresh ports.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn start_bound<P, A, R, Fut>(
        &mut self,
        name: &str,
        tier: u8,
        bin: &Path,
        logs: &Path,
        cancel: &CancellationToken,
        mut make: A,
        ready: R,
    ) -> Result<P, DemoError>
    where
        P: Clone,
        A: FnMut() -> Result<(P, Vec<String>), DemoError>,
        R: Fn(P) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let mut attempt = 1;
        loop {
            let (ports, argv) = make()?;
            self.procs.push(Proc::spawn(name, tier, bin, &argv, logs)?);
            let r = procs::wait_ready(name, &mut self.procs, READY_TIMEOUT, cancel, || {
                ready(ports.clone())
            })
            .await;
            match r {
                Ok(()) => return Ok(ports),
                Err(DemoError::ChildExited { name: n, .. })
                    if n == name && attempt < START_ATTEMPTS =>
                {
                    tracing::warn!(
                        name,
                        attempt,
                        "exited while starting (a port taken?); retrying with new ports"
                    );
                    self.procs.pop();
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// How long one child may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
