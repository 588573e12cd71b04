//! Analysis of a new release on the router's own metrics: error rate and
//! latency of the new version, absolute and relative to the stable one, over a
//! sliding window. The judge is pure; the controller feeds it the router's
//! windowed metrics and turns failures into rollbacks.

use std::time::Duration;

use baton_engine::Verdict;
use serde::{Deserialize, Serialize};

/// Limits the new release must stay within. `None` disables a check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnalysisConfig {
    /// Time between two measurements.
    pub interval: Duration,
    /// Length of the window each measurement looks at.
    pub window: Duration,
    /// Fewer requests than this to the new version in the window: no judgement.
    pub min_requests: u64,
    /// Failing measurements in a row before the rollout fails.
    pub failure_limit: u32,
    /// Highest error rate (5xx and router errors over requests), 0..=1.
    pub max_error_rate: Option<f64>,
    /// Highest error rate above the stable version's, 0..=1.
    pub max_error_rate_increase: Option<f64>,
    /// Highest p99 latency.
    pub max_p99: Option<Duration>,
    /// Highest p99 latency as a multiple of the stable version's.
    pub max_p99_ratio: Option<f64>,
    /// Highest memory of any one instance of the new version, in bytes.
    pub max_memory_bytes: Option<u64>,
    /// Highest mean memory of the new version's instances as a multiple of the
    /// stable version's.
    pub max_memory_ratio: Option<f64>,
    /// Highest CPU time per request of the new version as a multiple of the stable
    /// version's.
    pub max_cpu_per_request_ratio: Option<f64>,
    /// The stable version's p99 counts as at least this much in the relative
    /// check: at sub-millisecond latencies a ratio measures noise (0.4 ms is
    /// "2× 0.2 ms" and harms nobody).
    pub p99_ratio_floor: Duration,
}

/// Default of [`AnalysisConfig::p99_ratio_floor`].
pub const P99_RATIO_FLOOR: Duration = Duration::from_millis(5);

/// The analysis settings of an app, if it has any.
pub fn config_of(spec: &baton_spec::AppSpec) -> Option<AnalysisConfig> {
    let a = spec.analysis.as_ref()?;
    Some(AnalysisConfig {
        interval: a.interval,
        window: a.window,
        min_requests: a.min_requests,
        failure_limit: a.failure_limit,
        max_error_rate: a.max_error_rate,
        max_error_rate_increase: a.max_error_rate_increase,
        max_p99: a.max_p99,
        max_p99_ratio: a.max_p99_ratio,
        max_memory_bytes: a.max_memory_bytes,
        max_memory_ratio: a.max_memory_ratio,
        max_cpu_per_request_ratio: a.max_cpu_per_request_ratio,
        p99_ratio_floor: P99_RATIO_FLOOR,
    })
}

/// What one version did during a window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WindowCounts {
    pub requests: u64,
    pub errors: u64,
    /// p99 latency in the window, when the router measures it.
    pub p99: Option<Duration>,
    /// Memory of the version's instances now, when the driver measures it.
    pub memory: Option<MemoryUse>,
    /// CPU time the version's instances used during the window, in milliseconds,
    /// when the driver measures it.
    pub cpu_ms: Option<u64>,
}

/// Memory of one version's instances, from the driver's samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUse {
    /// The most any one instance uses.
    pub max_bytes: u64,
    /// The mean over its instances.
    pub mean_bytes: u64,
}

impl WindowCounts {
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// What one window shows against each configured limit, e.g.
/// `error rate 0.4% ≤ 5%, p99 12 ms ≤ 500 ms` (`>` where a limit is crossed),
/// for `status` and the events of passing checks. The verdict is [`judge`]'s.
pub fn describe_window(cfg: &AnalysisConfig, new: WindowCounts, stable: WindowCounts) -> String {
    let window = humantime::format_duration(cfg.window);
    if new.requests < cfg.min_requests {
        return format!(
            "{} requests in the last {window}, {} needed to judge",
            new.requests, cfg.min_requests
        );
    }
    let sign = |ok: bool| if ok { "≤" } else { ">" };
    let mut parts = Vec::new();
    let rate = new.error_rate();
    if let Some(limit) = cfg.max_error_rate {
        parts.push(format!(
            "error rate {} {} {}",
            percent(rate),
            sign(rate <= limit),
            percent(limit)
        ));
    }
    if let Some(limit) = cfg.max_error_rate_increase
        && stable.requests > 0
    {
        let over = rate - stable.error_rate();
        parts.push(format!(
            "error rate {} points over stable {} {}",
            percent(over.max(0.0)).trim_end_matches('%'),
            sign(over <= limit),
            percent(limit).trim_end_matches('%'),
        ));
    }
    if let (Some(limit), Some(p99)) = (cfg.max_p99, new.p99) {
        parts.push(format!(
            "p99 {} {} {}",
            millis(p99),
            sign(p99 <= limit),
            millis(limit)
        ));
    }
    if let (Some(ratio), Some(p99), Some(base)) = (cfg.max_p99_ratio, new.p99, stable.p99)
        && !base.is_zero()
    {
        let x = p99.as_secs_f64() / base.as_secs_f64();
        parts.push(format!(
            "p99 {x:.2}× stable's {} {} {ratio}×",
            millis(base),
            sign(x <= ratio)
        ));
    }
    if let (Some(limit), Some(mem)) = (cfg.max_memory_bytes, new.memory) {
        parts.push(format!(
            "memory {} {} {}",
            baton_driver::format_bytes(mem.max_bytes),
            sign(mem.max_bytes <= limit),
            baton_driver::format_bytes(limit)
        ));
    }
    if let (Some(ratio), Some(x)) = (cfg.max_memory_ratio, memory_ratio(new, stable)) {
        parts.push(format!(
            "memory {x:.2}× stable's {} {ratio}×",
            sign(x <= ratio)
        ));
    }
    if let (Some(ratio), Some(x)) = (cfg.max_cpu_per_request_ratio, cpu_ratio(new, stable)) {
        parts.push(format!(
            "CPU per request {x:.2}× stable's {} {ratio}×",
            sign(x <= ratio)
        ));
    }
    if parts.is_empty() {
        return format!("{} requests in the last {window}", new.requests);
    }
    format!(
        "{} ({} requests in the last {window})",
        parts.join(", "),
        new.requests
    )
}

/// `0.4%`, `5%`, `12.5%`.
fn percent(rate: f64) -> String {
    let p = rate * 100.0;
    if (p - p.round()).abs() < 0.05 {
        format!("{p:.0}%")
    } else {
        format!("{p:.1}%")
    }
}

/// `12 ms`, `0.4 ms`, `1500 ms`.
fn millis(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 && (ms - ms.round()).abs() >= 0.05 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// Mean memory of the new version over the stable one's, when both are measured.
fn memory_ratio(new: WindowCounts, stable: WindowCounts) -> Option<f64> {
    let (new, stable) = (new.memory?, stable.memory?);
    (stable.mean_bytes > 0).then(|| new.mean_bytes as f64 / stable.mean_bytes as f64)
}

/// CPU time per request of the new version over the stable one's, when both took
/// requests and used measurable CPU.
fn cpu_ratio(new: WindowCounts, stable: WindowCounts) -> Option<f64> {
    let (new_cpu, stable_cpu) = (new.cpu_ms?, stable.cpu_ms?);
    if new.requests == 0 || stable.requests == 0 || stable_cpu == 0 {
        return None;
    }
    let per = |cpu: u64, requests: u64| cpu as f64 / requests as f64;
    Some(per(new_cpu, new.requests) / per(stable_cpu, stable.requests))
}

/// Judge one window. `None` means "not enough data to say".
pub fn judge(
    cfg: &AnalysisConfig,
    new_version: &str,
    new: WindowCounts,
    stable: WindowCounts,
) -> Option<(Verdict, String)> {
    // Memory is judged whatever the traffic: a leak grows without requests.
    if let (Some(limit), Some(mem)) = (cfg.max_memory_bytes, new.memory)
        && mem.max_bytes > limit
    {
        return Some((
            Verdict::Fail,
            format!(
                "memory of {new_version} {} > limit {}",
                baton_driver::format_bytes(mem.max_bytes),
                baton_driver::format_bytes(limit)
            ),
        ));
    }
    if let (Some(ratio), Some(x)) = (cfg.max_memory_ratio, memory_ratio(new, stable))
        && x > ratio
    {
        return Some((
            Verdict::Fail,
            format!(
                "memory of {new_version} is {x:.2}× the stable version's ({} against {} per instance), more than {ratio}×",
                baton_driver::format_bytes(new.memory.unwrap_or_default().mean_bytes),
                baton_driver::format_bytes(stable.memory.unwrap_or_default().mean_bytes),
            ),
        ));
    }
    if new.requests < cfg.min_requests {
        return None;
    }
    let window = humantime::format_duration(cfg.window);
    if let (Some(ratio), Some(x)) = (cfg.max_cpu_per_request_ratio, cpu_ratio(new, stable))
        && x > ratio
    {
        return Some((
            Verdict::Fail,
            format!(
                "CPU time per request of {new_version} is {x:.2}× the stable version's, more than {ratio}× over the last {window}"
            ),
        ));
    }
    let rate = new.error_rate();
    if let Some(limit) = cfg.max_error_rate
        && rate > limit
    {
        return Some((
            Verdict::Fail,
            format!(
                "error rate of {new_version} {rate:.3} > limit {limit} over the last {window} ({} of {} requests failed)",
                new.errors, new.requests
            ),
        ));
    }
    if let Some(limit) = cfg.max_error_rate_increase
        && stable.requests > 0
        && rate - stable.error_rate() > limit
    {
        return Some((
            Verdict::Fail,
            format!(
                "error rate of {new_version} {rate:.3} exceeds the stable version's {:.3} by more than {limit} over the last {window}",
                stable.error_rate()
            ),
        ));
    }
    if let (Some(limit), Some(p99)) = (cfg.max_p99, new.p99)
        && p99 > limit
    {
        return Some((
            Verdict::Fail,
            format!(
                "p99 latency of {new_version} {} > limit {} over the last {window}",
                format_latency(p99),
                format_latency(limit)
            ),
        ));
    }
    // Compared in microseconds as the router measured them; the stable p99
    // counts as at least the floor, so only a slowdown users can feel fails.
    if let (Some(ratio), Some(p99), Some(base)) = (cfg.max_p99_ratio, new.p99, stable.p99)
        && stable.requests > 0
        && p99.as_secs_f64() > ratio * base.max(cfg.p99_ratio_floor).as_secs_f64()
    {
        let floor = if base < cfg.p99_ratio_floor {
            format!(" (counted as {})", format_latency(cfg.p99_ratio_floor))
        } else {
            String::new()
        };
        return Some((
            Verdict::Fail,
            format!(
                "p99 latency of {new_version} {} is more than {ratio}× the stable version's {}{floor} over the last {window}",
                format_latency(p99),
                format_latency(base)
            ),
        ));
    }
    Some((
        Verdict::Pass,
        format!("{new_version} within limits over the last {window}"),
    ))
}

/// A latency as people read it: µs below a millisecond, ms with one decimal
/// below ten, whole ms above (`0.42 ms` rather than a rounded `0ms`).
pub fn format_latency(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 10_000 {
        format!("{:.1} ms", us as f64 / 1_000.0)
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AnalysisConfig {
        AnalysisConfig {
            interval: Duration::from_secs(1),
            window: Duration::from_secs(10),
            min_requests: 50,
            failure_limit: 2,
            max_error_rate: Some(0.05),
            max_error_rate_increase: Some(0.02),
            max_p99: Some(Duration::from_millis(100)),
            max_p99_ratio: Some(2.0),
            max_memory_bytes: None,
            max_memory_ratio: None,
            max_cpu_per_request_ratio: None,
            p99_ratio_floor: P99_RATIO_FLOOR,
        }
    }

    fn counts_us(requests: u64, p99_us: u64) -> WindowCounts {
        WindowCounts {
            requests,
            errors: 0,
            p99: Some(Duration::from_micros(p99_us)),
            ..WindowCounts::default()
        }
    }

    #[test]
    fn sub_millisecond_latencies_are_not_a_relative_failure() {
        let mut c = cfg();
        c.max_p99 = None;
        c.max_p99_ratio = Some(1.5);
        // The reported false alarm: 0.4 ms against 0.2 ms is "2×" of nothing.
        let (v, reason) = judge(&c, "v2", counts_us(1000, 400), counts_us(1000, 200)).unwrap();
        assert_eq!(v, Verdict::Pass, "{reason}");
        // Up to ratio × floor (1.5 × 5 ms) is still within limits...
        let (v, reason) = judge(&c, "v2", counts_us(1000, 7_400), counts_us(1000, 300)).unwrap();
        assert_eq!(v, Verdict::Pass, "{reason}");
        // ...beyond it the slowdown is real, and the message says it in µs/ms.
        let (v, reason) = judge(&c, "v2", counts_us(1000, 9_000), counts_us(1000, 300)).unwrap();
        assert_eq!(v, Verdict::Fail);
        assert!(
            reason.contains(
                "9.0 ms is more than 1.5× the stable version's 300 µs (counted as 5.0 ms)"
            ),
            "{reason}"
        );
    }

    #[test]
    fn relative_latency_compares_real_values_not_rounded_milliseconds() {
        let mut c = cfg();
        c.max_p99 = None;
        c.max_p99_ratio = Some(1.5);
        c.p99_ratio_floor = Duration::ZERO;
        // 12.9 ms vs 9.0 ms is 1.43×: rounding to 12 and 9 or 13 and 9 would differ.
        let (v, _) = judge(&c, "v2", counts_us(1000, 12_900), counts_us(1000, 9_000)).unwrap();
        assert_eq!(v, Verdict::Pass);
        let (v, _) = judge(&c, "v2", counts_us(1000, 13_600), counts_us(1000, 9_000)).unwrap();
        assert_eq!(v, Verdict::Fail);
        // Without any stable request there is nothing to compare with.
        let (v, _) = judge(&c, "v2", counts_us(1000, 50_000), counts_us(0, 0)).unwrap();
        assert_eq!(v, Verdict::Pass);
    }

    #[test]
    fn latencies_read_as_people_read_them() {
        assert_eq!(format_latency(Duration::from_micros(420)), "420 µs");
        assert_eq!(format_latency(Duration::from_micros(4_240)), "4.2 ms");
        assert_eq!(format_latency(Duration::from_millis(250)), "250 ms");
    }

    fn counts(requests: u64, errors: u64, p99_ms: u64) -> WindowCounts {
        WindowCounts {
            requests,
            errors,
            p99: Some(Duration::from_millis(p99_ms)),
            ..WindowCounts::default()
        }
    }

    #[test]
    fn too_few_requests_is_no_verdict() {
        assert_eq!(
            judge(&cfg(), "v2", counts(10, 10, 1), counts(1000, 0, 1)),
            None
        );
    }

    #[test]
    fn error_rate_over_the_limit_fails_and_names_metric_value_limit_window() {
        let (v, reason) = judge(&cfg(), "v2", counts(1000, 210, 5), counts(1000, 0, 5)).unwrap();
        assert_eq!(v, Verdict::Fail);
        assert!(
            reason.contains("error rate of v2 0.210 > limit 0.05"),
            "{reason}"
        );
        assert!(reason.contains("10s"), "{reason}");
    }

    #[test]
    fn relative_error_rate_compares_with_stable() {
        let mut c = cfg();
        c.max_error_rate = None;
        let (v, _) = judge(&c, "v2", counts(1000, 40, 5), counts(1000, 10, 5)).unwrap();
        assert_eq!(v, Verdict::Fail);
        let (v, _) = judge(&c, "v2", counts(1000, 25, 5), counts(1000, 10, 5)).unwrap();
        assert_eq!(v, Verdict::Pass);
    }

    #[test]
    fn latency_checks_absolute_and_relative() {
        let (v, reason) = judge(&cfg(), "v2", counts(1000, 0, 250), counts(1000, 0, 5)).unwrap();
        assert_eq!(v, Verdict::Fail);
        assert!(
            reason.contains("p99 latency of v2 250 ms > limit 100 ms"),
            "{reason}"
        );
        let mut c = cfg();
        c.max_p99 = None;
        let (v, reason) = judge(&c, "v2", counts(1000, 0, 30), counts(1000, 0, 10)).unwrap();
        assert_eq!(v, Verdict::Fail, "{reason}");
    }

    #[test]
    fn a_window_is_described_value_against_limit() {
        let mut c = cfg();
        c.max_error_rate_increase = None;
        c.max_p99_ratio = None;
        assert_eq!(
            describe_window(&c, counts(1000, 4, 12), counts(1000, 0, 5)),
            "error rate 0.4% ≤ 5%, p99 12 ms ≤ 100 ms (1000 requests in the last 10s)"
        );
        assert!(
            describe_window(&c, counts(1000, 100, 250), counts(1000, 0, 5))
                .starts_with("error rate 10% > 5%, p99 250 ms > 100 ms"),
        );
        assert_eq!(
            describe_window(&c, counts(10, 0, 1), counts(1000, 0, 1)),
            "10 requests in the last 10s, 50 needed to judge"
        );
    }

    fn with_resources(requests: u64, mean_mib: u64, max_mib: u64, cpu_ms: u64) -> WindowCounts {
        WindowCounts {
            requests,
            memory: Some(MemoryUse {
                max_bytes: max_mib << 20,
                mean_bytes: mean_mib << 20,
            }),
            cpu_ms: Some(cpu_ms),
            ..WindowCounts::default()
        }
    }

    #[test]
    fn memory_over_the_limit_fails_even_without_traffic() {
        let mut c = cfg();
        c.max_memory_bytes = Some(64 << 20);
        let (v, reason) =
            judge(&c, "v2", with_resources(0, 50, 70, 0), counts(1000, 0, 5)).unwrap();
        assert_eq!(v, Verdict::Fail);
        assert_eq!(reason, "memory of v2 70 MiB > limit 64 MiB");
        assert_eq!(
            judge(&c, "v2", with_resources(0, 50, 60, 0), counts(1000, 0, 5)),
            None,
            "within the limit, and too few requests for the rest"
        );
    }

    #[test]
    fn memory_and_cpu_are_compared_with_the_stable_version() {
        let mut c = cfg();
        c.max_error_rate = None;
        c.max_error_rate_increase = None;
        c.max_p99 = None;
        c.max_p99_ratio = None;
        c.max_memory_ratio = Some(1.5);
        c.max_cpu_per_request_ratio = Some(2.0);
        let stable = with_resources(1000, 40, 40, 1000);
        let (v, reason) = judge(&c, "v2", with_resources(1000, 80, 80, 1000), stable).unwrap();
        assert_eq!(v, Verdict::Fail);
        assert!(
            reason.contains(
                "memory of v2 is 2.00× the stable version's (80 MiB against 40 MiB per instance)"
            ),
            "{reason}"
        );
        // 3 ms of CPU per request against 1 ms.
        let (v, reason) = judge(&c, "v2", with_resources(500, 40, 40, 1500), stable).unwrap();
        assert_eq!(v, Verdict::Fail);
        assert!(
            reason.contains("CPU time per request of v2 is 3.00×"),
            "{reason}"
        );
        let (v, reason) = judge(&c, "v2", with_resources(1000, 50, 50, 1500), stable).unwrap();
        assert_eq!(v, Verdict::Pass, "{reason}");
        assert_eq!(
            describe_window(&c, with_resources(1000, 50, 50, 1500), stable),
            "memory 1.25× stable's ≤ 1.5×, CPU per request 1.50× stable's ≤ 2× (1000 requests in the last 10s)"
        );
    }
}
