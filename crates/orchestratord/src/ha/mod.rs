//! High availability (decision 70): several orchestratord processes share one Postgres; one is
//! the leader. `election` campaigns for the leadership and keeps its lease; `gate` is what a
//! follower's listener answers (503 `NOT_LEADER` naming the leader) until this process leads.

pub mod election;
pub mod gate;
