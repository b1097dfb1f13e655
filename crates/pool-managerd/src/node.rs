//! The daemon's shared context for the worker API: who this node is, its dispatch token, the
//! engine timings a dispatch needs, the pools, the command book, the tasks' frame buffers and
//! the shutdown gate. It is
//! built once in [`crate::run`]; background parts (registration, handoff) get their own, smaller
//! contexts.

use std::sync::Arc;
use std::time::Duration;

use api::NodeId;
use daemon::secret::Secret;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::commands::CommandBook;
use crate::frames::Frames;
use crate::pools::PoolSet;

pub struct Node {
    pub node_id: NodeId,
    /// The token orchestratord presents on every route but `/health` and `/metrics`.
    pub dispatch_token: Secret,
    /// A dispatch whose engine sends nothing for this long fails with DECODE_TIMEOUT.
    pub idle_timeout: Duration,
    /// How long a cancel waits for the engine to confirm the slot free.
    pub cancel_confirm: Duration,
    pub pools: Arc<PoolSet>,
    pub book: Arc<CommandBook>,
    /// Running and recently finished tasks' lines, attachments, and the epoch fence.
    pub frames: Arc<Frames>,
    /// Tracks the dispatch tasks, so shutdown waits for them.
    pub tracker: TaskTracker,
    /// Cancelled when the daemon stops accepting dispatches.
    pub closing: CancellationToken,
}
