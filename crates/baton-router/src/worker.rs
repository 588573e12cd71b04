//! Worker threads: each runs a single-threaded tokio runtime with its own accept loop
//! per listener and its own upstream pool (`upstream`), so nothing on the request path
//! is shared between cores except the routing snapshot and the counters.

use std::cell::Cell;
use std::num::NonZeroUsize;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// Index of the worker running on this thread; 0 on any other thread.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Index of the worker thread calling (0 outside workers): selects the worker's own
/// metrics shard.
#[inline]
pub(crate) fn index() -> usize {
    INDEX.with(Cell::get)
}

/// The worker runtimes. Dropping this stops every worker (their tasks are dropped).
pub(crate) struct Workers {
    handles: Vec<Handle>,
    /// Dropping a sender ends its worker's `block_on`.
    _stop: Vec<oneshot::Sender<()>>,
}

/// Workers when none is asked for: one per CPU.
pub(crate) fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

impl Workers {
    /// Starts `n` worker threads (at least one), each calling `every_period` on its own
    /// thread every `period` (the upstream pool's sweep).
    pub fn start(
        n: usize,
        period: std::time::Duration,
        every_period: fn(),
    ) -> std::io::Result<Workers> {
        let n = n.max(1);
        let mut handles = Vec::with_capacity(n);
        let mut stop = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, rx) = oneshot::channel::<()>();
            handles.push(rt.handle().clone());
            std::thread::Builder::new()
                .name(format!("baton-worker-{i}"))
                .spawn(move || {
                    INDEX.with(|c| c.set(i));
                    rt.block_on(async move {
                        let sweep = async {
                            let mut every = tokio::time::interval(period);
                            loop {
                                every.tick().await;
                                every_period();
                            }
                        };
                        tokio::select! {
                            _ = rx => {}
                            _ = sweep => {}
                        }
                    });
                })?;
            stop.push(tx);
        }
        Ok(Workers {
            handles,
            _stop: stop,
        })
    }

    /// No worker threads: listeners run on the caller's runtime.
    pub fn none() -> Workers {
        Workers {
            handles: Vec::new(),
            _stop: Vec::new(),
        }
    }

    /// The runtimes to spawn accept loops on; empty for [`Workers::none`].
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}
