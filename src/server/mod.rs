//! The controller's HTTP endpoints.

pub mod webhook;
