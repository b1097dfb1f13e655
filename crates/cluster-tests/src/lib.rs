//! This crate only holds the end-to-end test binary `tests/cluster`; see its `main.rs`.
