//! Which build of baton this process runs, so that a control plane can tell a router
//! of another build (and replace it by handover, see [`crate::handover`]).

use std::path::Path;
use std::sync::OnceLock;

/// This router's build: its version, and the size and modification time of the
/// executable it runs (read once, at the first call: `/proc/self/exe` still names the
/// running file after a new one was installed over it).
pub fn build_id() -> &'static str {
    static BUILD: OnceLock<String> = OnceLock::new();
    BUILD.get_or_init(|| {
        let exe = std::env::current_exe().unwrap_or_default();
        let running = Path::new("/proc/self/exe");
        if running.exists() {
            build_of(running)
        } else {
            build_of(&exe)
        }
    })
}

/// The build of the baton executable at `exe`, as [`build_id`] reports it for a
/// router running it.
pub fn build_of(exe: &Path) -> String {
    let version = env!("CARGO_PKG_VERSION");
    match std::fs::metadata(exe) {
        Ok(m) => {
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            format!("{version}+{:x}.{mtime:x}", m.len())
        }
        Err(_) => version.to_string(),
    }
}
