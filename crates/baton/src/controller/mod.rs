//! The control plane: one controller per app, running the engine.
//!
//! - [`actor`]: the [`AppController`] task that owns an app's state and is
//!   its only writer: commands and observations in, engine step, commit to
//!   the store, routing published, actions carried out;
//! - [`params`]: the pure part, an app's spec turned into engine parameters;
//! - [`launch`]: the launch effect, a revision turned into an instance;
//! - [`sensors`]: readiness, driver events, analysis, upgrade windows and
//!   smoke tests, each turning observations into engine inputs;
//! - [`handle`]: what the API holds: commands, answers and status views;
//! - [`shared`]: the store and the effects every controller uses.

mod actor;
pub mod handle;
pub(crate) mod launch;
pub mod params;
pub mod sensors;
pub mod shared;

pub use actor::AppController;
pub use handle::{AppHandle, AppView, Command, CommandError, DeployAccepted, DeployRequest};
pub use params::params_of;
pub use sensors::analysis::LastCheck;
pub use sensors::mirror::MirrorSummary;
pub use shared::Shared;
