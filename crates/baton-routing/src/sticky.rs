//! Version-sticky cohorts: a client that saw the new version keeps seeing it while the
//! weights change. Pure: no I/O; the only clock read is in [`CohortRng::from_clock`].
//!
//! Each client gets a stable cohort number in `0..COHORTS` ([`COHORTS`] = 10,000),
//! random when first seen and kept in a cookie. Cohorts map to versions by cumulative
//! weight in a fixed order where the **newest version comes first** and takes the low
//! cohort numbers: with weights new = 20, old = 80, cohorts `0..2000` go to the new
//! version and `2000..10000` to the old one. Raising the new version's share only moves
//! the boundary up, so the clients that move are old-version clients becoming
//! new-version clients; nobody on the new version is sent back. A rollback (new weight
//! 0) sends everyone to the old version at once.
//!
//! With more than two versions the same holds for every prefix: a cohort only moves
//! towards the front of the list while each prefix's share of the total weight does
//! not shrink. The caller passes weight 0 for a version with no ready backend, which
//! moves its cohorts to the next version in the list until it is back.
//!
//! Intended wiring, per request of a sticky app: [`cohort_from_headers`]; if `None`,
//! draw one with the worker's [`CohortRng`] and add a `Set-Cookie` header built by
//! [`set_cookie_value`] to the response; then [`index_for_cohort`] over the versions'
//! weights, newest first. Match rules run before all this and win over the cohort.

use http::HeaderValue;

use crate::config::DEFAULT_STICKY_COOKIE;
use crate::rules::RequestHeaders;
pub use crate::rules::valid_cookie_name;

/// Number of cohorts; cohort numbers are `0..COHORTS`, one per 0.01% of traffic.
pub const COHORTS: u16 = 10_000;

/// The client's cohort from the sticky cookie `cookie_name`, or `None` when it is
/// absent or not a number below [`COHORTS`] (the caller then assigns a new one).
/// Does not allocate.
pub fn cohort_from_headers<H: RequestHeaders + ?Sized>(
    headers: &H,
    cookie_name: &str,
) -> Option<u16> {
    let v = crate::rules::find_cookie(headers, cookie_name)?;
    if v.is_empty() || v.len() > 5 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u16>().ok().filter(|&c| c < COHORTS)
}

/// A cohort derived from `seed`, uniformly spread over `0..COHORTS` (bias below 1e-15).
/// Consecutive seeds give unrelated cohorts, so a counter mixed with the time is enough
/// as a seed; see [`CohortRng`].
pub fn new_cohort(seed: u64) -> u16 {
    // `% COHORTS` keeps the value below 10,000, so it fits in u16.
    (splitmix64(seed) % u64::from(COHORTS)) as u16
}

/// splitmix64's output function: a cheap bijective mixer with good avalanche.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A per-worker cohort generator: a counter run through [`new_cohort`]. Each worker
/// owns one (no lock, no shared state); seed them differently, e.g. with
/// [`CohortRng::from_clock`] and the worker index.
#[derive(Debug, Clone)]
pub struct CohortRng {
    state: u64,
}

impl CohortRng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        CohortRng {
            state: splitmix64(seed),
        }
    }

    /// A generator seeded from the wall clock and `worker`, so that restarts and
    /// workers do not replay the same cohorts.
    pub fn from_clock(worker: u64) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        CohortRng::new(nanos ^ splitmix64(worker))
    }

    /// The next cohort.
    pub fn next_cohort(&mut self) -> u16 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        new_cohort(self.state)
    }
}

/// Index of the version that `cohort` belongs to, given the versions' weights in the
/// fixed order **newest version first**. Version `i` owns the cohorts from
/// `COHORTS * (w0 + .. + w(i-1)) / total` up to `COHORTS * (w0 + .. + wi) / total`;
/// weight-0 versions own none. `None` when every weight is 0. Does not allocate.
pub fn index_for_cohort(cohort: u16, weights: &[u32]) -> Option<usize> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return None;
    }
    let c = u64::from(cohort.min(COHORTS - 1));
    let mut cum = 0u64;
    for (i, &w) in weights.iter().enumerate() {
        cum += u64::from(w);
        if w > 0 && c < cum * u64::from(COHORTS) / total {
            return Some(i);
        }
    }
    // Unreachable: the last non-zero weight's boundary is COHORTS > c. Kept total.
    weights.iter().rposition(|&w| w > 0)
}

/// Name of the version that `cohort` belongs to; `versions` are (name, weight) with the
/// **newest version first** (see [`index_for_cohort`]). `None` when every weight is 0.
pub fn version_for_cohort<S: AsRef<str>>(cohort: u16, versions: &[(S, u32)]) -> Option<&str> {
    let total: u64 = versions.iter().map(|(_, w)| u64::from(*w)).sum();
    if total == 0 {
        return None;
    }
    let c = u64::from(cohort.min(COHORTS - 1));
    let mut cum = 0u64;
    let mut last = None;
    for (name, w) in versions {
        cum += u64::from(*w);
        if *w > 0 {
            last = Some(name.as_ref());
            if c < cum * u64::from(COHORTS) / total {
                return last;
            }
        }
    }
    last
}

/// The `Set-Cookie` value that stores `cohort`: `NAME=COHORT; Path=/; Max-Age=N;
/// HttpOnly; SameSite=Lax`. Path=/ so that assets follow the page's version. A name
/// that [`valid_cookie_name`] rejects (config validation refuses it) is replaced by
/// [`DEFAULT_STICKY_COOKIE`]. Allocates; called only when a cohort is assigned.
pub fn set_cookie_value(cookie_name: &str, cohort: u16, max_age_s: u64) -> HeaderValue {
    let name = if valid_cookie_name(cookie_name) {
        cookie_name
    } else {
        DEFAULT_STICKY_COOKIE
    };
    let s = format!("{name}={cohort}; Path=/; Max-Age={max_age_s}; HttpOnly; SameSite=Lax");
    // Only token characters, digits and fixed ASCII text: always a valid header value.
    HeaderValue::try_from(s).unwrap_or_else(|_| HeaderValue::from_static(DEFAULT_STICKY_COOKIE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use proptest::prelude::*;

    fn cookie_headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, v.parse().unwrap());
        h
    }

    #[test]
    fn reads_cohort_cookie() {
        let h = cookie_headers("a=1; baton_cohort=1234; b=2");
        assert_eq!(cohort_from_headers(&h, "baton_cohort"), Some(1234));
        assert_eq!(cohort_from_headers(&h, "other"), None);
        for bad in ["10000", "-1", "+5", "", "abc", "123456", "99999"] {
            let h = cookie_headers(&format!("baton_cohort={bad}"));
            assert_eq!(cohort_from_headers(&h, "baton_cohort"), None, "{bad}");
        }
        assert_eq!(cohort_from_headers(&HeaderMap::new(), "baton_cohort"), None);
        let h = cookie_headers("baton_cohort=0");
        assert_eq!(cohort_from_headers(&h, "baton_cohort"), Some(0));
    }

    #[test]
    fn set_cookie_round_trips() {
        let v = set_cookie_value("baton_cohort", 42, 3600);
        assert_eq!(
            v.to_str().unwrap(),
            "baton_cohort=42; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax"
        );
        // What the browser sends back is the part before the first ';'.
        let back = v.to_str().unwrap().split(';').next().unwrap();
        assert_eq!(
            cohort_from_headers(&cookie_headers(back), "baton_cohort"),
            Some(42)
        );
        let v = set_cookie_value("bad name", 1, 1);
        assert!(v.to_str().unwrap().starts_with("baton_cohort=1;"));
    }

    #[test]
    fn new_version_takes_low_cohorts() {
        let v = [("v2", 10), ("v1", 90)];
        assert_eq!(version_for_cohort(0, &v), Some("v2"));
        assert_eq!(version_for_cohort(999, &v), Some("v2"));
        assert_eq!(version_for_cohort(1000, &v), Some("v1"));
        assert_eq!(version_for_cohort(9999, &v), Some("v1"));
        assert_eq!(index_for_cohort(999, &[10, 90]), Some(0));
        assert_eq!(index_for_cohort(1000, &[10, 90]), Some(1));
        // Zero weights own nothing; all-zero routes nowhere.
        assert_eq!(version_for_cohort(0, &[("v2", 0), ("v1", 100)]), Some("v1"));
        assert_eq!(
            version_for_cohort(9999, &[("v2", 100), ("v1", 0)]),
            Some("v2")
        );
        assert_eq!(version_for_cohort(5, &[("v2", 0), ("v1", 0)]), None);
        assert_eq!(index_for_cohort(5, &[]), None);
        // Relative weights work the same as percentages.
        assert_eq!(index_for_cohort(1999, &[1, 4]), Some(0));
        assert_eq!(index_for_cohort(2000, &[1, 4]), Some(1));
        // Out-of-range cohorts are clamped rather than falling off the end.
        assert_eq!(index_for_cohort(u16::MAX, &[1, 1, 0]), Some(1));
    }

    #[test]
    fn split_over_all_cohorts_is_exact() {
        let mut counts = [0u32; 3];
        for c in 0..COHORTS {
            counts[index_for_cohort(c, &[5, 25, 70]).unwrap()] += 1;
        }
        assert_eq!(counts, [500, 2500, 7000]);
    }

    #[test]
    fn generator_spreads_cohorts() {
        let mut rng = CohortRng::new(7);
        let mut buckets = [0u32; 10];
        for _ in 0..100_000 {
            buckets[usize::from(rng.next_cohort() / 1000)] += 1;
        }
        for b in buckets {
            assert!((9_500..10_500).contains(&b), "{buckets:?}");
        }
        let mut a = CohortRng::from_clock(0);
        let mut b = CohortRng::from_clock(1);
        let sa: Vec<u16> = (0..8).map(|_| a.next_cohort()).collect();
        let sb: Vec<u16> = (0..8).map(|_| b.next_cohort()).collect();
        assert_ne!(sa, sb);
    }

    #[test]
    fn clients_never_switch_back_as_weight_rises() {
        let mut rng = CohortRng::new(1);
        let clients: Vec<u16> = (0..1000).map(|_| rng.next_cohort()).collect();
        let mut seen: Vec<&str> = vec![""; clients.len()];
        let mut on_new = 0;
        for w in [10, 50, 100] {
            let versions = [("v2", w), ("v1", 100 - w)];
            on_new = 0;
            for (i, &c) in clients.iter().enumerate() {
                let v = match version_for_cohort(c, &versions).unwrap() {
                    "v2" => "v2",
                    _ => "v1",
                };
                assert!(
                    seen[i].is_empty() || seen[i] == v || (seen[i] == "v1" && v == "v2"),
                    "client {i} (cohort {c}) moved {} -> {v} at weight {w}",
                    seen[i]
                );
                seen[i] = v;
                on_new += u32::from(v == "v2");
            }
        }
        assert_eq!(on_new, 1000);
    }

    proptest! {
        #[test]
        fn new_version_is_monotone(cohort in 0..COHORTS, w1 in 0u32..=100, dw in 0u32..=100) {
            let w2 = (w1 + dw).min(100);
            if index_for_cohort(cohort, &[w1, 100 - w1]) == Some(0) {
                prop_assert_eq!(index_for_cohort(cohort, &[w2, 100 - w2]), Some(0));
            }
        }

        #[test]
        fn monotone_with_relative_weights(
            cohort in 0..COHORTS, new in 0u32..1000, old in 1u32..1000, extra in 0u32..1000,
        ) {
            // The new version's share grows from new/(new+old) to (new+extra)/(new+extra+old).
            if index_for_cohort(cohort, &[new, old]) == Some(0) {
                prop_assert_eq!(index_for_cohort(cohort, &[new + extra, old]), Some(0));
            }
        }

        #[test]
        fn names_and_indices_agree(cohort in 0..COHORTS, w in proptest::collection::vec(0u32..50, 1..5)) {
            let named: Vec<(String, u32)> =
                w.iter().enumerate().map(|(i, &w)| (format!("v{i}"), w)).collect();
            let by_index = index_for_cohort(cohort, &w).map(|i| named[i].0.as_str());
            prop_assert_eq!(version_for_cohort(cohort, &named), by_index);
        }
    }
}
