//! The leader election: a Postgres advisory lock held on a dedicated connection, plus a lease row
//! the leader renews every quarter of `state.lease_ms`. Whoever takes the lock bumps the `epoch`
//! and becomes leader. A follower polls every 100 ms: the lock of a dead leader is free at once
//! (its connection closed); a leader that stopped renewing (paused) while its connection lives is
//! superseded once its lease is older than `lease_ms`, by terminating the connection that holds the
//! lock. A leader whose renewal fails has lost its lease and steps down.
//!
//! The election runs on its own thread with the blocking `postgres` client, so a slow database
//! never stalls the runtime.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::Client;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::HaConfig;
use crate::core::dispatch::Fence;
use crate::core::pgstate::{self, LEADER_LOCK};

/// How often a follower tries the lock.
const POLL: Duration = Duration::from_millis(100);

/// This process won: its epoch and fence, and a token cancelled when it loses the lease.
pub struct Leadership {
    pub fence: Arc<Fence>,
    pub lost: CancellationToken,
}

/// Starts campaigning. The watch holds the leader's advertised URL as last seen (this process's
/// own once it leads); the oneshot fires when this process becomes leader.
pub fn start(
    ha: HaConfig,
    stop: CancellationToken,
) -> (
    watch::Receiver<Option<String>>,
    oneshot::Receiver<Leadership>,
) {
    let (leader_tx, leader_rx) = watch::channel(None);
    let (won_tx, won_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("ha-election".into())
        .spawn(move || campaign(&ha, &leader_tx, won_tx, &stop))
        .expect("spawning the election thread");
    (leader_rx, won_rx)
}

fn campaign(
    ha: &HaConfig,
    leader: &watch::Sender<Option<String>>,
    won: oneshot::Sender<Leadership>,
    stop: &CancellationToken,
) {
    let mut down_logged = false;
    let mut won = Some(won);
    while !stop.is_cancelled() {
        let mut c = match pgstate::connect(ha.url.expose()).map_err(|e| e.to_string()) {
            Ok(mut c) => match pgstate::migrate(&mut c) {
                Ok(()) => c,
                Err(e) => {
                    tracing::error!(
                        event = "ha.db_unreachable",
                        "The state database refused its schema: {e}"
                    );
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            },
            Err(e) => {
                if !down_logged {
                    tracing::error!(event = "ha.db_unreachable", url = %ha.url,
                        "Cannot reach the state database ({e}); retrying every 500 ms");
                    down_logged = true;
                }
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        if down_logged {
            tracing::info!(
                event = "ha.db_reachable",
                "The state database is reachable again"
            );
            down_logged = false;
        }
        match follow(ha, &mut c, leader, stop) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(
                    event = "ha.db_unreachable",
                    "Lost the state database connection: {e}"
                );
                continue;
            }
        }
        // The lock is ours.
        let Some(w) = won.take() else { return };
        lead(ha, c, leader, w, stop);
        return;
    }
}

/// Polls until this process holds the lock (Ok(true)) or is told to stop (Ok(false)).
fn follow(
    ha: &HaConfig,
    c: &mut Client,
    leader: &watch::Sender<Option<String>>,
    stop: &CancellationToken,
) -> Result<bool, postgres::Error> {
    let mut superseding_logged = None;
    loop {
        if stop.is_cancelled() {
            return Ok(false);
        }
        let got: bool = c
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])?
            .get(0);
        if got {
            return Ok(true);
        }
        let row = c.query_opt(
            "SELECT address, backend_pid, epoch,
                    (extract(epoch from (now() - renewed_at)) * 1000)::bigint
             FROM llorch_leader WHERE id = 1",
            &[],
        )?;
        if let Some(row) = row {
            let address: String = row.get(0);
            let pid: i32 = row.get(1);
            let epoch: i64 = row.get(2);
            let age_ms: i64 = row.get(3);
            leader.send_if_modified(|cur| {
                let changed = cur.as_deref() != Some(address.as_str());
                if changed {
                    *cur = Some(address.clone());
                }
                changed
            });
            if age_ms > ha.lease.as_millis() as i64 {
                // The holder of the lock must be the leader of that row, or we would end the wrong
                // connection (the lock may have just changed hands).
                let holder: Option<i32> = c
                    .query_opt(
                        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
                           AND objsubid = 1
                           AND database = (SELECT oid FROM pg_database
                                           WHERE datname = current_database())
                           AND ((classid::bigint << 32) | objid::bigint) = $1
                         LIMIT 1",
                        &[&LEADER_LOCK],
                    )?
                    .map(|r| r.get(0));
                if holder == Some(pid) {
                    if superseding_logged != Some(epoch) {
                        tracing::warn!(event = "ha.superseding", epoch = epoch, leader = %address,
                            "The leader of epoch {epoch} at {address} has not renewed its lease for {age_ms} ms; taking over");
                        superseding_logged = Some(epoch);
                    }
                    c.execute("SELECT pg_terminate_backend($1)", &[&pid])?;
                }
            }
        }
        std::thread::sleep(POLL);
    }
}

/// Bumps the epoch, announces the leadership and renews the lease until it is lost or the
/// process stops (dropping the connection releases the lock at once).
fn lead(
    ha: &HaConfig,
    mut c: Client,
    leader: &watch::Sender<Option<String>>,
    won: oneshot::Sender<Leadership>,
    stop: &CancellationToken,
) {
    let at = Instant::now();
    let epoch: i64 = match c.query_one(
        "INSERT INTO llorch_leader (id, epoch, address, backend_pid, renewed_at)
         VALUES (1, 1, $1, pg_backend_pid(), now())
         ON CONFLICT (id) DO UPDATE SET epoch = llorch_leader.epoch + 1,
             address = EXCLUDED.address, backend_pid = EXCLUDED.backend_pid, renewed_at = now()
         RETURNING epoch",
        &[&ha.advertise_url],
    ) {
        Ok(r) => r.get(0),
        Err(e) => {
            tracing::error!(
                event = "ha.stepped_down",
                "Could not record the leadership: {e}"
            );
            let lost = CancellationToken::new();
            lost.cancel();
            let _ = won.send(Leadership {
                fence: Arc::new(Fence::new(0)),
                lost,
            });
            return;
        }
    };
    let epoch = epoch as u64;
    let fence = Arc::new(Fence::new(epoch));
    fence.renewed(at, ha.lease);
    let lost = CancellationToken::new();
    leader.send_replace(Some(ha.advertise_url.clone()));
    tracing::info!(event = "ha.elected", epoch = epoch, address = %ha.advertise_url,
        "This orchestratord is the leader (epoch {epoch})");
    if won
        .send(Leadership {
            fence: fence.clone(),
            lost: lost.clone(),
        })
        .is_err()
    {
        return;
    }
    let every = ha.lease / 4;
    loop {
        // Sleep in small steps so a shutdown releases the lock promptly.
        let until = Instant::now() + every;
        while Instant::now() < until {
            if stop.is_cancelled() {
                let _ = c.execute("SELECT pg_advisory_unlock($1)", &[&LEADER_LOCK]);
                tracing::info!(
                    event = "ha.released",
                    epoch = epoch,
                    "Released the leadership (epoch {epoch})"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let at = Instant::now();
        match c.execute(
            "UPDATE llorch_leader SET renewed_at = now()
             WHERE id = 1 AND epoch = $1 AND backend_pid = pg_backend_pid()",
            &[&(epoch as i64)],
        ) {
            Ok(1) => fence.renewed(at, ha.lease),
            Ok(_) => {
                tracing::error!(
                    event = "ha.stepped_down",
                    epoch = epoch,
                    "Another orchestratord took over from epoch {epoch}; stepping down"
                );
                lost.cancel();
                return;
            }
            Err(e) => {
                tracing::error!(
                    event = "ha.stepped_down",
                    epoch = epoch,
                    "Cannot renew the lease of epoch {epoch} ({e}); stepping down"
                );
                lost.cancel();
                return;
            }
        }
    }
}
