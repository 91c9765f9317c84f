//! logveil: a host log shipping agent that redacts PII on the host and ships Ed25519-signed,
//! hash-chained, zstd-compressed batches to a verifiable central store.
//!
//! The agent's data flow, one module per stage: `source` (tail files) → `redact` →
//! `pipeline` (records, batches, sealing) → `buffer` (sled) → `ship` (HTTP) → `receive`
//! (the central store) → `archive` / `verify` (offline tools). See docs/ for formats.
#![forbid(unsafe_code)]

pub mod access;
pub mod agent;
pub mod archive;
pub mod buffer;
pub mod cli;
pub mod config;
pub mod crash;
pub mod custody;
pub mod envelope;
pub mod pipeline;
pub mod receive;
pub mod redact;
pub mod s3;
pub mod ship;
pub mod source;
pub mod telemetry;
pub mod verify;
pub mod verify_s3;
