//! Broadcast end-to-end tests: see `tests/e2e.rs`.
