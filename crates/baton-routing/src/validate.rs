//! Checks of a pushed [`RoutingConfig`]: the invariants the router relies on, and every
//! rule, cookie name and mirror setting compiled once to find what would not work. Kept
//! apart from the wire types ([`crate::config`]) so that they depend on nothing.

use std::collections::HashSet;

use crate::config::{AppRoutes, RoutingConfig};
use crate::mirror::CompareRules;
use crate::rules::{CompiledRules, valid_cookie_name};

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
            validate_policies(app).map_err(|e| format!("apps[{i}].{e}"))?;
        }
        Ok(())
    }
}

/// Checks rules, sticky and mirror settings of one app; the message starts with the
/// field path inside the app.
fn validate_policies(app: &AppRoutes) -> Result<(), String> {
    CompiledRules::compile(&app.rules).map_err(|e| e.to_string())?;
    if let Some(sticky) = &app.sticky
        && !valid_cookie_name(&sticky.cookie)
    {
        return Err(format!(
            "sticky.cookie: {:?} is not a valid cookie name (use letters, digits and -_.)",
            sticky.cookie
        ));
    }
    if let Some(m) = &app.mirror {
        if !(m.percent.is_finite() && (0.0..=100.0).contains(&m.percent)) {
            return Err(format!(
                "mirror.percent: {} is not between 0 and 100",
                m.percent
            ));
        }
        CompareRules::compile(m).map_err(|e| format!("mirror.{e}"))?;
    }
    Ok(())
}
