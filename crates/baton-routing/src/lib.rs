//! baton-routing: the routing policy baton's router applies and the wire types the
//! control plane and the router speak, with no I/O.
//!
//! [`config`] is the table the control plane pushes (apps, versions and backends,
//! match rules, sticky cohorts, mirroring, shielding, limits), checked by
//! [`RoutingConfig::validate`](config::RoutingConfig::validate) (`validate`).
//! [`rules`] compiles match rules once and matches request heads; [`sticky`] keeps a
//! client's cohort; [`select`] splits traffic by weight; [`mirror`] decides which
//! requests are copied and compares two answers; [`record`] keeps a recorded slice of
//! traffic; [`metrics`] holds per-(app, version) counters and latency windows, written
//! by one thread and read without locks; [`stats`] is what the router reports.
//!
//! Dependencies go one way: `config` and `limits` depend on nothing here; `rules`,
//! `sticky`, `mirror`, `record` and `stats` on the types below them; `validate` on all.

pub mod config;
pub mod limits;
pub mod metrics;
pub mod mirror;
pub mod record;
pub mod rules;
pub mod select;
pub mod stats;
pub mod sticky;
mod validate;

/// For tests: a header map of `(name, value)` pairs, in order (repeats kept).
#[cfg(test)]
pub(crate) fn header_map(pairs: &[(&str, &str)]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}
