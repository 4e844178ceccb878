//! The first discovery round, and beside it the UDP check against the relay's host
//! (`discovery::relay_check`): a TCP-only node learns that UDP is blocked once the relay
//! has authenticated and its host stayed silent for a few of that handshake's times, instead
//! of after the round's whole retransmission schedule.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use wirekube_crds::WireKubePeer;
use wirekube_relay_client::{ConnectionState, Status};

use super::Agent;
use crate::discovery::{
    self, DiscoveryReport, FIRST_DISCOVERY_GRACE, FirstRound, Retransmit, candidates, relay_check,
};
use crate::kubeapi::TokenWatch;

/// The UDP check: started at most once per round, when the relay is up.
struct UdpCheck {
    task: JoinHandle<Option<String>>,
    servers: Vec<SocketAddr>,
    handshake: Duration,
    started: Instant,
}

impl Drop for UdpCheck {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How the round ended.
enum RoundEnd {
    /// The round's own report (`None`: its task failed).
    Report(Option<DiscoveryReport>),
    /// The check stayed silent while the relay answered over TCP; the round was stopped.
    Silent(DiscoveryReport),
}

impl Agent {
    /// The first discovery round, from the WireGuard port itself before the dataplane binds
    /// it (docs/lab-findings.md §7.7): the key and the discovery result are published first,
    /// as the operator needs both to plan anyone's path to us. False while the round is to be
    /// retried (the discovery tick, reset here, wakes the retry).
    pub(super) async fn first_discovery(
        &mut self,
        peer: &Arc<WireKubePeer>,
        token: &mut TokenWatch,
        started: Instant,
        disc_tick: &mut tokio::time::Interval,
    ) -> bool {
        let port = (self.dp.is_none()).then_some(peer.spec.listen_port);
        let round_started = Instant::now();
        let (answered, checked_silent) = match self.run_first_round(peer, token, port).await {
            RoundEnd::Report(Some(r)) => {
                let answered = r.stun_reachable;
                disc_tick.reset_after(self.on_discovery(r));
                (answered, false)
            }
            RoundEnd::Report(None) => (false, false),
            RoundEnd::Silent(r) => {
                disc_tick.reset_after(self.on_discovery(r));
                (false, true)
            }
        };
        let relay_up = checked_silent
            || self.relay.as_ref().is_some_and(|r| {
                let st = r.client.state();
                st.status == Status::Connected
                    && discovery::relay_up_for_round(
                        st.connected_since,
                        round_started,
                        Retransmit::default().last_send(),
                    )
            });
        match discovery::after_first_round(answered, port.is_some(), relay_up, started.elapsed()) {
            FirstRound::Done => {}
            FirstRound::UdpBlocked => tracing::info!(
                "no STUN answer while the relay answers over TCP: UDP is blocked here; \
                 binding WireGuard without waiting for the first-discovery grace"
            ),
            FirstRound::GraceOver => tracing::info!(
                "no STUN answer for {FIRST_DISCOVERY_GRACE:?}: binding WireGuard anyway"
            ),
            // Published but silent servers (the relay pod not ready yet, its address not
            // announced): the WireGuard port's own mapping is worth a few more seconds before
            // the dataplane binds the port and it can no longer be measured.
            FirstRound::Retry => return false,
        }
        self.seed_srflx(peer);
        true
    }

    /// Runs the round to its end, starting the relay client when the token arrives (usually
    /// while the round runs: the Secret is read after the spec; a TCP-only node decided one
    /// STUN round, 2.75 s, later without this) and the UDP check when the relay is up.
    async fn run_first_round(
        &mut self,
        peer: &Arc<WireKubePeer>,
        token: &mut TokenWatch,
        port: Option<u16>,
    ) -> RoundEnd {
        let Some(mut round) = self.spawn_discovery(&Some(peer.clone()), port) else {
            return RoundEnd::Report(None);
        };
        let mut relay_rx = self.relay.as_ref().map(|r| r.client.watch_state());
        let mut check: Option<UdpCheck> = None;
        let mut check_done = false;
        loop {
            if check.is_none() && !check_done {
                check = self.start_udp_check(peer);
            }
            tokio::select! {
                r = &mut round => return RoundEnd::Report(r.ok()),
                c = token.changed().changed() => {
                    if c.is_err() {
                        return RoundEnd::Report((&mut round).await.ok());
                    }
                    self.ensure_relay(peer, token.token());
                    relay_rx = self.relay.as_ref().map(|r| r.client.watch_state());
                }
                _ = relay_changed(&mut relay_rx) => {}
                answer = check_finished(&mut check) => {
                    check_done = true;
                    let Some(c) = check.take() else { continue };
                    match answer {
                        Some(rtt) => tracing::debug!(
                            servers = ?c.servers, "UDP check answered{rtt}; the round goes on"
                        ),
                        None => {
                            // Awaited, not only aborted: the round holds the WireGuard port,
                            // which the dataplane binds next.
                            round.abort();
                            let _ = (&mut round).await;
                            let waited = c.started.elapsed();
                            return RoundEnd::Silent(relay_check::silent_report(
                                &c.servers, waited, c.handshake,
                            ));
                        }
                    }
                }
            }
        }
    }

    /// Starts the UDP check if the relay has authenticated and the round asks its host.
    fn start_udp_check(&self, peer: &WireKubePeer) -> Option<UdpCheck> {
        let relay = self.relay.as_ref()?;
        let st = relay.client.state();
        let handshake = (st.status == Status::Connected)
            .then_some(st.handshake_time)
            .flatten()?;
        let local: Vec<IpAddr> = (candidates::local_addrs().unwrap_or_default().iter())
            .map(|a| a.ip)
            .collect();
        let servers =
            relay_check::check_servers(&discovery::stun_servers(&peer.spec), &relay.addr, &local)?;
        let rt = relay_check::check_schedule(handshake);
        let targets = servers.clone();
        let task = tokio::spawn(async move {
            match relay_check::any_answer(&targets, rt).await {
                Ok(a) => a,
                // No socket for the check: say "answered", so only the round decides.
                Err(e) => Some(format!(" (check not run: {e})")),
            }
        });
        Some(UdpCheck {
            task,
            servers,
            handshake,
            started: Instant::now(),
        })
    }
}

async fn relay_changed(rx: &mut Option<watch::Receiver<ConnectionState>>) {
    if let Some(rx) = rx.as_mut()
        && rx.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// The check's answer (`None`: silent) once it finished; pending while there is none.
async fn check_finished(check: &mut Option<UdpCheck>) -> Option<String> {
    match check.as_mut() {
        // A check that panicked or was cancelled decides nothing.
        Some(c) => (&mut c.task)
            .await
            .unwrap_or_else(|e| Some(format!(" (check failed: {e})"))),
        None => std::future::pending().await,
    }
}
