//! Loom models of shmrpc's protocol: see `tests/models.rs`. This crate is empty unless built
//! with `RUSTFLAGS="--cfg loom"`.
