//! The store task: it owns the state backend (the SQLite [`catalog::Store`], or in an HA group
//! the Postgres [`PgState`], which also keeps task rows) and commits the changes the core queues,
//! in order, on a blocking thread, so the core never waits on the disk or the database. A reply
//! that acknowledges a catalog change to a client carries a [`Durable`] that the HTTP handler
//! awaits before answering, so a change is durable before it is acknowledged (as when the core
//! wrote through). When a write fails, the core's mirror is resynchronized from what the store
//! holds, replaying the changes queued since the resynchronization was asked for.

use catalog::{Store, Write};
use futures::future::{FutureExt, Shared};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use super::pgstate::{PgState, TaskRow};
use super::runner::Msg;
use super::{Core, Effects};

/// Where the store task writes.
pub enum Backend {
    Sqlite(Store),
    Postgres(PgState),
}

impl Backend {
    fn commit(&mut self, writes: &[Write], tasks: &[TaskRow]) -> Result<(), String> {
        match self {
            Backend::Sqlite(store) => {
                for w in writes {
                    store.apply(w).map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            Backend::Postgres(pg) => pg.commit(writes, tasks),
        }
    }

    fn load(&mut self) -> Result<Vec<api::catalog::ModelRecord>, String> {
        match self {
            Backend::Sqlite(store) => store.load().map_err(|e| e.to_string()),
            Backend::Postgres(pg) => pg.load_catalog(),
        }
    }
}

/// A commit the reply (or a dispatch) must not overtake; [`Durable::wait`] resolves once the store
/// has it. Clones wait for the same commit.
#[must_use]
#[derive(Clone)]
pub struct Durable(Option<Shared<oneshot::Receiver<bool>>>);

impl Durable {
    /// Nothing to wait for (the request changed no catalog record).
    pub fn none() -> Self {
        Self(None)
    }

    /// Waits for the commit; INTERNAL when it failed (or the store is gone).
    pub async fn wait(self) -> Result<(), api::ErrorEnvelope> {
        let Some(rx) = self.0 else { return Ok(()) };
        match rx.await {
            Ok(true) => Ok(()),
            _ => Err(api::ErrorEnvelope::new(
                api::ErrorCode::Internal,
                "the state store could not be written",
            )),
        }
    }
}

enum Job {
    Commit {
        writes: Vec<Write>,
        tasks: Vec<TaskRow>,
        done: oneshot::Sender<bool>,
    },
    /// Load every record after all earlier commits and send them to the core.
    Reload,
}

/// The core's side of the store task.
pub struct StoreLink {
    jobs: mpsc::UnboundedSender<Job>,
    /// The last commit asked for: once it is in, so is everything before it.
    last: Durable,
    /// While a resynchronization is under way: the changes queued since it was asked for.
    replay: Option<Vec<Write>>,
}

impl StoreLink {
    /// Starts the store task on a blocking thread; it reports to the core through `core_tx`.
    pub fn spawn(
        store: Backend,
        tracker: &TaskTracker,
        core_tx: mpsc::UnboundedSender<Msg>,
    ) -> Self {
        let (jobs, rx) = mpsc::unbounded_channel();
        tracker.spawn_blocking(move || run(store, rx, core_tx));
        Self {
            jobs,
            last: Durable::none(),
            replay: None,
        }
    }

    /// Sends the catalog changes and task rows the core queued to the store; the returned
    /// [`Durable`] resolves when they are committed.
    pub fn flush<E: Effects>(&mut self, core: &mut Core<E>) -> Durable {
        let writes = core.take_catalog_writes();
        let tasks = core.take_task_rows();
        if writes.is_empty() && tasks.is_empty() {
            return Durable::none();
        }
        if let Some(replay) = &mut self.replay {
            replay.extend(writes.iter().cloned());
        }
        let (done, rx) = oneshot::channel();
        if self
            .jobs
            .send(Job::Commit {
                writes,
                tasks,
                done,
            })
            .is_err()
        {
            tracing::error!(event = "catalog.write_failed", "The state store is gone");
        }
        self.last = Durable(Some(rx.shared()));
        self.last.clone()
    }

    /// Resolves once every change flushed so far is committed.
    pub fn last(&self) -> Durable {
        self.last.clone()
    }

    /// A write failed: ask the store for what it holds (once per failure burst).
    pub fn write_failed(&mut self) {
        if self.replay.is_none() && self.jobs.send(Job::Reload).is_ok() {
            self.replay = Some(Vec::new());
        }
    }

    /// The store's records arrived: the mirror becomes them plus the changes queued since.
    pub fn reloaded<E: Effects>(
        &mut self,
        core: &mut Core<E>,
        records: Vec<api::catalog::ModelRecord>,
    ) {
        let replay = self.replay.take().unwrap_or_default();
        core.catalog_resync(records, &replay);
    }
}

fn run(
    mut store: Backend,
    mut rx: mpsc::UnboundedReceiver<Job>,
    core_tx: mpsc::UnboundedSender<Msg>,
) {
    while let Some(job) = rx.blocking_recv() {
        match job {
            Job::Commit {
                writes,
                tasks,
                done,
            } => {
                let ok = match store.commit(&writes, &tasks) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(event = "catalog.write_failed", "State write failed: {e}");
                        if !writes.is_empty() {
                            let _ = core_tx.send(Msg::CatalogWriteFailed);
                        }
                        false
                    }
                };
                let _ = done.send(ok);
            }
            Job::Reload => match store.load() {
                Ok(records) => {
                    let _ = core_tx.send(Msg::CatalogReloaded { records });
                }
                Err(e) => {
                    tracing::error!(event = "catalog.write_failed", "Catalog reload failed: {e}")
                }
            },
        }
    }
}
