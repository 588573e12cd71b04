//! How one request ended, recorded once: the status counters, the windowed metrics
//! sample and, for a failure, the log line — together, so that they never disagree.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::metrics::RequestSample;
use crate::table::{AppCounters, VersionCounters};

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The backend's answer went to the user. `latency`: for a stream, until its head
    /// (its length says nothing about the backend); `None`: until now, the end of the
    /// answer.
    Answered {
        status: u16,
        bytes_out: u64,
        latency: Option<Duration>,
    },
    /// A failure of a non-stable version that shielding answered from the stable one:
    /// counted against the version that failed, though the user never saw it.
    /// `ours`: no answer came (the router counts a 502 for it).
    Shielded { status: u16, ours: bool },
    /// No response head within the response timeout: the user got 504.
    TimedOut,
    /// Every attempt failed: the user got 502.
    BadGateway,
    /// Nothing could take the request within the hold timeout: the user got 503.
    NoBackend,
}

/// The request an outcome belongs to.
pub(crate) struct Request<'a> {
    pub app: &'a str,
    pub start: Instant,
    /// Request body bytes.
    pub bytes_in: u64,
}

impl Outcome {
    /// The status the user (or, shielded, the version) is counted with.
    fn status(self) -> u16 {
        match self {
            Outcome::Answered { status, .. } | Outcome::Shielded { status, .. } => status,
            Outcome::TimedOut => 504,
            Outcome::BadGateway => 502,
            Outcome::NoBackend => 503,
        }
    }

    /// Records the outcome against `version` (the last one tried), or against `app`
    /// when no version was tried.
    pub(crate) fn record(
        self,
        req: &Request<'_>,
        version: Option<&VersionCounters>,
        app: Option<&AppCounters>,
    ) {
        let now = Instant::now();
        let status = self.status();
        match self {
            Outcome::Answered { .. } => {}
            Outcome::Shielded { ours, .. } => {
                tracing::debug!(app = %req.app, status, ours, "shielded: answered by the stable version");
            }
            Outcome::TimedOut => {
                tracing::warn!(app = %req.app, "backend did not answer in time");
            }
            Outcome::BadGateway => {
                tracing::warn!(app = %req.app, "every upstream attempt failed");
            }
            Outcome::NoBackend => {
                tracing::warn!(app = %req.app, "no backend became ready within the hold timeout");
            }
        }
        let Some(v) = version else {
            if let Some(a) = app {
                a.no_backend.fetch_add(1, Ordering::Relaxed);
            }
            return;
        };
        let (router_error, bytes_out, latency) = match self {
            Outcome::Answered {
                bytes_out, latency, ..
            } => (
                false,
                bytes_out,
                latency.unwrap_or_else(|| now.saturating_duration_since(req.start)),
            ),
            Outcome::Shielded { ours, .. } => {
                v.shielded.fetch_add(1, Ordering::Relaxed);
                (ours, 0, now.saturating_duration_since(req.start))
            }
            Outcome::TimedOut | Outcome::BadGateway | Outcome::NoBackend => {
                v.router_errors.fetch_add(1, Ordering::Relaxed);
                (true, 0, now.saturating_duration_since(req.start))
            }
        };
        // A failure the router made up (no answer came) is a 502 in the metrics
        // windows, not in the version's status counts of answers.
        if !matches!(self, Outcome::Shielded { ours: true, .. }) {
            v.record_status(status);
        }
        v.record(
            now,
            &RequestSample {
                status,
                latency,
                bytes_in: req.bytes_in,
                bytes_out,
                router_error,
            },
        );
    }
}
