//! bosun: a GitOps reconciler that executes deployment runbooks and flips a bad
//! revision back to the last healthy one by itself.
//!
//! The life of a revision, one module per stage:
//! [`source`] (fetch) → [`render`] → [`apply`] → [`gates`] (verify) →
//! [`snapshot`] (healthy) or rollback. [`core`] decides the next step from plain
//! data; [`controller`] does the I/O. [`devenv`] is the local control plane the
//! tests, the demo and the benchmark run on.
#![forbid(unsafe_code)]

pub mod api;
pub mod apply;
pub mod bench;
pub mod controller;
pub mod core;
pub mod crdgen;
pub mod demo;
pub mod devenv;
pub mod gates;
pub mod render;
pub mod snapshot;
pub mod source;
pub mod telemetry;
