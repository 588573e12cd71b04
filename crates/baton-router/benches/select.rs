//! Hot-path costs of baton's router decisions: weighted version selection, match rules,
//! sticky cohort lookup and metrics recording.
//!
//! Run: `cargo bench -p baton-router --bench select` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use baton_router::config::{Match, NamedMatch, RouteRule, ValueMatch};
use baton_router::metrics::{RequestSample, VersionMetrics};
use baton_router::rules::CompiledRules;
use baton_router::{select, sticky};
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};

/// A browser-like request: a dozen headers, several cookies.
fn typical_headers(canary_cookie: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    let cookie = if canary_cookie {
        "_ga=GA1.2.3; session=4f9a8c7e2b; baton_cohort=1234; canary=1; theme=dark"
    } else {
        "_ga=GA1.2.3; session=4f9a8c7e2b; baton_cohort=1234; theme=dark"
    };
    for (k, v) in [
        ("host", "shop.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
        ),
        ("accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-US,en;q=0.9"),
        ("cache-control", "no-cache"),
        ("connection", "keep-alive"),
        ("referer", "https://shop.example.com/"),
        ("x-request-id", "0d4c7a1e-9f3b-4c2a-8e6d-5b1a2c3d4e5f"),
        ("x-forwarded-for", "203.0.113.7"),
        ("cookie", cookie),
    ] {
        h.append(k, HeaderValue::from_static(v));
    }
    h
}

fn five_rules() -> CompiledRules {
    let header = |name: &str, v: ValueMatch| {
        Match::Header(NamedMatch {
            name: name.into(),
            value: v,
        })
    };
    let rules = vec![
        RouteRule {
            matches: vec![header("x-canary", ValueMatch::Equals("always".into()))],
            version: "v2".into(),
        },
        RouteRule {
            matches: vec![header("x-user", ValueMatch::Regex("^qa-[0-9]+$".into()))],
            version: "v2".into(),
        },
        RouteRule {
            matches: vec![
                Match::PathPrefix("/api/beta/".into()),
                header("x-beta", ValueMatch::Equals("1".into())),
            ],
            version: "v2".into(),
        },
        RouteRule {
            matches: vec![Match::Method("PATCH".into())],
            version: "v1".into(),
        },
        RouteRule {
            matches: vec![Match::Cookie(NamedMatch {
                name: "canary".into(),
                value: ValueMatch::Equals("1".into()),
            })],
            version: "v2".into(),
        },
    ];
    CompiledRules::compile(&rules).expect("bench rules are valid")
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("router");
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(500));

    // Weighted selection as the snapshot does it: one atomic fetch_add into a
    // precomputed smooth-WRR cycle, then round robin over 4 backends.
    let cycle = select::smooth_wrr_cycle(&[10, 90]);
    let next = AtomicUsize::new(0);
    let next_backend = AtomicUsize::new(0);
    g.bench_function("weighted_version_and_backend", |b| {
        b.iter(|| {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let v = cycle[n % cycle.len()];
            let start = next_backend.fetch_add(1, Ordering::Relaxed);
            let be = select::best(select::rotated(4, start).map(|i| {
                let rank = select::rank(false, i == 2);
                let p = select::Preference {
                    rank,
                    fallback: false,
                    load: 0,
                };
                (i, p)
            }));
            black_box((v, be))
        })
    });

    let rules = five_rules();
    let hit = typical_headers(true);
    let miss = typical_headers(false);
    g.bench_function("rules_5_hit_last_cookie", |b| {
        b.iter(|| black_box(rules.route(&Method::GET, black_box("/products/42"), &hit)))
    });
    g.bench_function("rules_5_miss", |b| {
        b.iter(|| black_box(rules.route(&Method::GET, black_box("/products/42"), &miss)))
    });

    g.bench_function("sticky_cohort_lookup", |b| {
        b.iter(|| {
            let c = sticky::cohort_from_headers(&miss, black_box("baton_cohort"));
            black_box(c.and_then(|c| sticky::index_for_cohort(c, &[20, 80])))
        })
    });

    let t0 = Instant::now();
    let m = VersionMetrics::new(t0);
    let sample = RequestSample {
        status: 200,
        latency: Duration::from_micros(850),
        bytes_in: 0,
        bytes_out: 512,
        router_error: false,
    };
    // Allocate the current second's histograms outside the measurement.
    m.record(Instant::now(), &sample);
    g.bench_function("metrics_record_request", |b| {
        b.iter(|| m.record(black_box(Instant::now()), black_box(&sample)))
    });
    g.finish();
}

criterion_group!(router, benches);
criterion_main!(router);
