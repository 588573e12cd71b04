//! The sample service shipped with baton for demos and tests.
//!
//! It reports its version on every response (`X-Version`), has a health
//! endpoint, and has fault knobs (error rate, added latency, slow start, never
//! ready, crash, memory growth) so that every failure mode of an upgrade can be
//! shown for real. Run it as `baton sample ...` or as the `baton-sample` binary;
//! see [`USAGE`] for its arguments and knobs.

mod options;
mod server;

use std::future::Future;
use std::process::ExitCode;

pub use options::{FaultKnobs, SampleOptions, Shape, USAGE};
pub use server::{serve, serve_listener};

/// Runs the sample service with `args` (without the program name) until SIGTERM
/// or SIGINT, then shuts down gracefully and returns 0. A second signal exits at
/// once. Bad arguments or environment print a message and return 2.
pub fn run_main(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let opts = match SampleOptions::from_args(args) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("baton-sample: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baton-sample: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        serve(opts, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton-sample: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT. Handlers are installed at once, so a
/// signal during a slow start is not lost; a second signal exits immediately.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            eprintln!("baton-sample: second signal, exiting without draining");
            std::process::exit(1);
        });
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

#[cfg(test)]
mod tests;
