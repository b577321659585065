//! bosun's contract and its decision, with no Kubernetes client: [`api`] holds the
//! custom resources (`bosun.dev/v1alpha1`), [`core`] decides the next step of a
//! revision's life from plain data. The controller crate does the I/O around them.
#![forbid(unsafe_code)]

pub mod api;
pub mod core;
