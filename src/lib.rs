//! bosun: a GitOps reconciler that executes deployment runbooks and flips a bad
//! revision back to the last healthy one by itself.
//!
//! The life of a revision, one module per stage:
//! [`source`] (fetch) → [`render`] → [`apply`] → [`gates`] (verify) →
//! [`snapshot`] (healthy) or rollback. [`core`] (the `bosun-core` crate, which has no
//! Kubernetes client) decides the next step from plain data; [`controller`] does the
//! I/O. With the `devenv` feature, [`demo`] and [`bench`] run all of it on a local
//! control plane (the `bosun-devenv` crate).
#![forbid(unsafe_code)]

pub use bosun_core::{api, core};

pub mod access;
pub mod apply;
#[cfg(feature = "devenv")]
pub mod bench;
pub mod cli;
pub mod controller;
pub mod crdgen;
#[cfg(feature = "devenv")]
pub mod demo;
pub mod egress;
pub mod failure;
pub mod gates;
pub mod jobs;
pub mod notify;
pub mod preflight;
pub mod render;
pub mod server;
pub mod snapshot;
pub mod source;
pub mod telemetry;
