//! baton: hands a running service from one version to the next without dropping
//! a request. This crate is the binary's body: CLI, control plane (controller,
//! API), the link to the router process, and the demo.

/// std's `println!` panics when stdout is a pipe whose reader has gone
/// (`baton history shop | head -2`), which ends the CLI with exit 101. This one,
/// shadowing it in every module of the crate (it is defined before them), stops
/// writing quietly instead and lets the command finish with its own exit code.
macro_rules! println {
    () => {
        $crate::term::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::term::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub mod admission;
pub mod analysis;
pub mod api;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod client;
pub mod containers;
pub mod controller;
pub mod dashboard;
pub mod demo;
pub mod effects;
pub mod fleet;
pub mod health;
pub mod hooks;
pub mod loadgen;
pub mod lock;
pub mod node;
pub mod notify;
pub mod preflight;
pub mod replay;
pub mod routing;
pub mod serve;
pub mod server;
pub mod sim;
pub mod stream;
pub mod term;
pub mod tls;
pub mod tokens;
pub mod windows;
