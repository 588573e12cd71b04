//! baton: hands a running service from one version to the next without dropping
//! a request. This crate is the binary's body: CLI, control plane (controller,
//! API), the link to the router process, and the demo.

pub mod admission;
pub mod analysis;
pub mod api;
pub mod cli;
pub mod client;
pub mod controller;
pub mod demo;
pub mod health;
pub mod hooks;
pub mod loadgen;
pub mod preflight;
pub mod routing;
pub mod server;
pub mod windows;
