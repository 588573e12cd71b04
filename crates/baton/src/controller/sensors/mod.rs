//! Sensors: each turns one kind of observation of the world into the
//! engine's inputs, and decides nothing itself. The actor
//! ([`super::actor`]) runs them and applies what they report.
//!
//! - [`readiness`]: one health checker per running instance (`Ready`/`Unready`);
//! - [`exits`]: the driver's view of each process (`Exited`);
//! - [`analysis`]: the router's metrics judged against the limits (`Analysis`);
//! - [`mirror`]: a mirror step's comparisons judged against its limit (`Analysis`);
//! - [`window`]: the upgrade windows opening and closing (`Pause`/`Resume`);
//! - [`checks`]: the smoke tests of a `Checks` step (`ChecksPassed`/`ChecksFailed`);
//! - [`hosts`]: the app's hosts that stop answering (`HostsUnreachable`);
//! - [`resources`]: the driver's CPU and memory samples of each instance, for
//!   the analysis and `status`.

pub mod analysis;
pub mod checks;
pub mod exits;
pub mod hosts;
pub mod mirror;
pub mod readiness;
pub mod resources;
pub mod window;
