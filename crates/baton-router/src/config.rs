//! The routing configuration pushed by the control plane, and its validation.
//!
//! These types are the wire format of `PUT /v1/config`; they do no I/O.
//!
//! Unknown fields are accepted on purpose (no `deny_unknown_fields`): the router
//! outlives control-plane restarts and upgrades, so a newer control plane must be able
//! to push to an older router. Strict checking belongs to the spec parser upstream.

use std::collections::HashSet;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The whole routing table of the router. Replaced as a unit on every push.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct RoutingConfig {
    /// Fencing number: a push with a lower generation than the live one is refused.
    pub generation: u64,
    /// One entry per application, each with its own listener.
    pub apps: Vec<AppRoutes>,
}

/// The routes of one application.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AppRoutes {
    /// Application name, unique within a config.
    pub app: String,
    /// Address the router listens on for this app's users. Port 0 binds any free port
    /// (the bound address is reported in the push result).
    pub listen: SocketAddr,
    /// When no backend is ready, hold a request up to this long waiting for a new
    /// config, then answer 503.
    pub hold_timeout_ms: u64,
    /// Weighted split between versions.
    pub versions: Vec<VersionRoute>,
}

/// One version of an application and its backends.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VersionRoute {
    /// Version name, unique within an app.
    pub version: String,
    /// Relative weight; 0 means no user traffic.
    pub weight: u32,
    /// Instances serving this version.
    pub backends: Vec<Backend>,
}

/// One instance the router may send requests to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Instance id (informational; the router keys its counters by address).
    pub id: String,
    /// Where the instance listens for HTTP/1.1.
    pub address: SocketAddr,
}

impl RoutingConfig {
    /// Checks the invariants the router relies on: unique app names, unique version
    /// names within an app, unique non-zero listen addresses. Returns a message naming
    /// the offending field.
    pub fn validate(&self) -> Result<(), String> {
        let mut names = HashSet::new();
        let mut listens = HashSet::new();
        for (i, app) in self.apps.iter().enumerate() {
            if app.app.is_empty() {
                return Err(format!("apps[{i}].app: must not be empty"));
            }
            if !names.insert(app.app.as_str()) {
                return Err(format!(
                    "apps[{i}].app: duplicate app name {:?}; each app needs a unique name",
                    app.app
                ));
            }
            if app.listen.port() != 0 && !listens.insert(app.listen) {
                return Err(format!(
                    "apps[{i}].listen: {} is already used by another app",
                    app.listen
                ));
            }
            let mut versions = HashSet::new();
            for (j, v) in app.versions.iter().enumerate() {
                if !versions.insert(v.version.as_str()) {
                    return Err(format!(
                        "apps[{i}].versions[{j}].version: duplicate version {:?} in app {:?}",
                        v.version, app.app
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str, port: u16) -> AppRoutes {
        AppRoutes {
            app: name.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            hold_timeout_ms: 100,
            versions: vec![],
        }
    }

    #[test]
    fn rejects_duplicates() {
        let cfg = RoutingConfig {
            generation: 1,
            apps: vec![app("a", 1), app("a", 2)],
        };
        assert!(cfg.validate().unwrap_err().contains("duplicate app"));
        let cfg = RoutingConfig {
            generation: 1,
            apps: vec![app("a", 1), app("b", 1)],
        };
        assert!(cfg.validate().unwrap_err().contains("listen"));
        let cfg = RoutingConfig {
            generation: 1,
            apps: vec![app("a", 0), app("b", 0)],
        };
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn json_round_trip() {
        let cfg = RoutingConfig {
            generation: 7,
            apps: vec![app("a", 8080)],
        };
        let s = serde_json::to_string(&cfg).unwrap();
        let back: RoutingConfig = serde_json::from_str(&s).unwrap();
        assert_eq!(cfg, back);
    }
}
