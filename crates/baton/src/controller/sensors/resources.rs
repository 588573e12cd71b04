//! Resources: the driver's samples of each instance's CPU time and memory,
//! kept for the analysis window. They feed the analysis's memory and CPU limits
//! (see [`crate::analysis`]) and `status`.
//!
//! Sampling runs in a background task (a container engine can take a while to
//! answer), at most one round at a time, so the actor's loop never waits on it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use baton_driver::{DynDriver, InstanceHandle, ResourceSample};
use baton_engine::{AppState, Millis};
use serde::Serialize;

use crate::analysis::MemoryUse;

/// Time between two sampling rounds.
pub const SAMPLE_INTERVAL_MS: Millis = 2_000;
/// Samples older than this are dropped (longer than any useful analysis window).
const KEEP_MS: Millis = 10 * 60 * 1_000;

/// What `status` shows of one instance's resources.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct InstanceResources {
    pub version: String,
    /// CPU used between the last two samples, in cores (1.0 = one core busy).
    pub cpu_cores: Option<f64>,
    /// CPU time used since the instance started, in milliseconds.
    pub cpu_ms: u64,
    pub memory_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_peak_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    pub oom_kills: u64,
    pub sampled_ms: Millis,
}

#[derive(Default)]
struct History {
    /// Per instance: its version and its samples, oldest first.
    instances: BTreeMap<String, (String, VecDeque<(Millis, ResourceSample)>)>,
}

/// The resource samples of an app's instances.
pub struct Resources {
    history: Arc<Mutex<History>>,
    sampling: Option<tokio::task::JoinHandle<()>>,
    last_round_ms: Millis,
    view: tokio::sync::watch::Sender<Arc<BTreeMap<String, InstanceResources>>>,
}

pub type ResourcesView = tokio::sync::watch::Receiver<Arc<BTreeMap<String, InstanceResources>>>;

impl Resources {
    pub fn new() -> (Self, ResourcesView) {
        let (view, rx) = tokio::sync::watch::channel(Arc::new(BTreeMap::new()));
        (
            Resources {
                history: Arc::default(),
                sampling: None,
                last_round_ms: Millis::MIN,
                view,
            },
            rx,
        )
    }

    /// Starts a sampling round of every instance with a handle, when one is due
    /// and none is under way. `now` is the controller's clock.
    pub fn tick(&mut self, driver: &Arc<dyn DynDriver>, state: &AppState, now: Millis) {
        if self.sampling.as_ref().is_some_and(|t| !t.is_finished())
            || now.saturating_sub(self.last_round_ms) < SAMPLE_INTERVAL_MS
        {
            return;
        }
        self.last_round_ms = now;
        let targets: Vec<(String, String, InstanceHandle)> = state
            .instances
            .iter()
            .filter(|i| {
                i.is_live() || matches!(i.phase, baton_engine::InstancePhase::Draining { .. })
            })
            .filter_map(|i| Some((i.id.clone(), i.version.clone(), i.handle.clone()?)))
            .collect();
        let history = self.history.clone();
        let driver = driver.clone();
        let view = self.view.clone();
        self.sampling = Some(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(targets.len());
            for (id, version, handle) in targets {
                if let Some(sample) = driver.sample(&handle).await {
                    samples.push((id, version, sample));
                }
            }
            let mut h = history.lock().unwrap_or_else(|e| e.into_inner());
            h.record(now, samples);
            view.send_replace(Arc::new(h.view()));
        }));
    }

    /// Memory now, and CPU time used over the last `window_ms`, of `version`'s
    /// instances; `None` where the driver gave no samples.
    pub fn version_use(
        &self,
        version: &str,
        window_ms: Millis,
        now: Millis,
    ) -> (Option<MemoryUse>, Option<u64>) {
        let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        h.version_use(version, window_ms, now)
    }
}

impl History {
    fn record(&mut self, now: Millis, samples: Vec<(String, String, ResourceSample)>) {
        let sampled: Vec<&String> = samples.iter().map(|(id, ..)| id).collect();
        // Instances not sampled this round are gone (or going): forget them.
        self.instances.retain(|id, _| sampled.contains(&id));
        for (id, version, sample) in samples {
            let (_, series) = self
                .instances
                .entry(id)
                .or_insert_with(|| (version, VecDeque::new()));
            series.push_back((now, sample));
            while series.front().is_some_and(|(t, _)| now - t > KEEP_MS) {
                series.pop_front();
            }
        }
    }

    fn view(&self) -> BTreeMap<String, InstanceResources> {
        self.instances
            .iter()
            .filter_map(|(id, (version, series))| {
                let (at, last) = series.back()?;
                let cpu_cores = series
                    .len()
                    .checked_sub(2)
                    .and_then(|i| series.get(i))
                    .filter(|(t, _)| at > t)
                    .map(|(t, prev)| {
                        last.cpu_ms.saturating_sub(prev.cpu_ms) as f64 / (at - t) as f64
                    });
                Some((
                    id.clone(),
                    InstanceResources {
                        version: version.clone(),
                        cpu_cores,
                        cpu_ms: last.cpu_ms,
                        memory_bytes: last.memory_bytes,
                        memory_peak_bytes: last.memory_peak_bytes,
                        memory_limit_bytes: last.memory_limit_bytes,
                        oom_kills: last.oom_kills,
                        sampled_ms: *at,
                    },
                ))
            })
            .collect()
    }

    fn version_use(
        &self,
        version: &str,
        window_ms: Millis,
        now: Millis,
    ) -> (Option<MemoryUse>, Option<u64>) {
        let series: Vec<&VecDeque<(Millis, ResourceSample)>> = self
            .instances
            .values()
            .filter(|(v, _)| v == version)
            .map(|(_, s)| s)
            .collect();
        let latest: Vec<u64> = series
            .iter()
            .filter_map(|s| s.back().map(|(_, x)| x.memory_bytes))
            .collect();
        let memory = (!latest.is_empty()).then(|| MemoryUse {
            max_bytes: latest.iter().copied().max().unwrap_or(0),
            mean_bytes: latest.iter().sum::<u64>() / latest.len() as u64,
        });
        // CPU used inside the window: the newest sample minus the oldest one
        // taken in the window, per instance. An instance sampled once adds nothing.
        let mut cpu = None;
        for s in &series {
            let Some((_, last)) = s.back() else { continue };
            if let Some((_, first)) = s.iter().find(|(t, _)| now - t <= window_ms) {
                *cpu.get_or_insert(0) += last.cpu_ms.saturating_sub(first.cpu_ms);
            }
        }
        (memory, cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(cpu_ms: u64, mib: u64) -> ResourceSample {
        ResourceSample {
            cpu_ms,
            memory_bytes: mib << 20,
            ..ResourceSample::default()
        }
    }

    #[test]
    fn memory_and_cpu_of_a_version_over_the_window() {
        let mut h = History::default();
        h.record(
            0,
            vec![
                ("a".into(), "v1".into(), sample(100, 40)),
                ("b".into(), "v2".into(), sample(100, 60)),
                ("c".into(), "v2".into(), sample(0, 80)),
            ],
        );
        h.record(
            10_000,
            vec![
                ("a".into(), "v1".into(), sample(600, 40)),
                ("b".into(), "v2".into(), sample(2_100, 64)),
                ("c".into(), "v2".into(), sample(1_000, 96)),
            ],
        );
        let (mem, cpu) = h.version_use("v2", 20_000, 10_000);
        assert_eq!(
            mem,
            Some(MemoryUse {
                max_bytes: 96 << 20,
                mean_bytes: 80 << 20
            })
        );
        assert_eq!(cpu, Some(3_000));
        // A window that holds only the newest sample measures no CPU yet.
        assert_eq!(h.version_use("v1", 5_000, 10_000).1, Some(0));
        assert_eq!(h.version_use("v3", 20_000, 10_000), (None, None));
        let view = h.view();
        assert_eq!(view["b"].cpu_cores, Some(0.2));
        assert_eq!(view["b"].memory_bytes, 64 << 20);
        // An instance missing from a round is gone.
        h.record(12_000, vec![("a".into(), "v1".into(), sample(700, 40))]);
        assert_eq!(h.view().len(), 1);
    }
}
