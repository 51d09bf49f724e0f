//! The command-line tools beside `sluice run`, one module each. They load the configuration
//! through the same function as the daemon, so they read the state the daemon wrote.

pub mod backfill;
pub mod checkpoints;
pub mod dead_letters;
pub mod healthcheck;
pub mod index;
pub mod leases;
pub mod verify;
