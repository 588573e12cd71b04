//! Upgraded connections (WebSocket and other `Upgrade:` protocols) and the draining of
//! long-lived streams.
//!
//! An upgrade request goes to a backend on a fresh connection; on `101 Switching
//! Protocols` both sockets are spliced. While the splice runs the backend's in-flight
//! count stays up, so the control plane waits for it when draining. When the backend
//! leaves the routing table (or the router stops), the stream gets the app's grace
//! period, then a WebSocket gets a close frame 1001 "going away" at a frame boundary
//! (never a reset) and other protocols are shut down.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::table::BackendState;
use crate::upstream::InFlight;

/// Longest wait for the end of a frame in progress once a drain is due.
const FRAME_END_WAIT: Duration = Duration::from_secs(5);
/// Longest wait for the client's close frame after ours.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(2);

/// Resolves once `state`'s backend has left the routing table and `grace` has passed.
pub(crate) fn drain_signal(
    state: Arc<BackendState>,
    grace: Duration,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        removed(&state).await;
        tokio::time::sleep(grace).await;
    })
}

async fn removed(state: &BackendState) {
    loop {
        let notified = state.removed_notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if state.removed.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }
}

/// Copies both ways until either side ends or `drain` resolves; on drain a WebSocket
/// gets a close frame 1001 at the next frame boundary. `early` is what the backend
/// sent right after its `101` head, passed on first.
pub(crate) async fn splice<C, B>(
    client: C,
    backend: B,
    early: &[u8],
    websocket: bool,
    drain: impl Future<Output = ()>,
    guard: InFlight,
) where
    C: tokio::io::AsyncRead + AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut br, mut bw) = tokio::io::split(backend);
    let mut frames = Frames::default();
    if !early.is_empty() {
        frames.feed(early);
        if cw.write_all(early).await.is_err() {
            let _ = bw.shutdown().await;
            return;
        }
    }
    let mut buf = vec![0u8; 16 * 1024];
    let mut draining = false;
    let mut drain_deadline = None;
    tokio::pin!(drain);
    enum End {
        Backend,
        Client,
        Drain,
    }
    let end = {
        let up = tokio::io::copy(&mut cr, &mut bw);
        tokio::pin!(up);
        loop {
            if draining && (!websocket || frames.at_boundary()) {
                break End::Drain;
            }
            let deadline = async {
                match drain_deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = br.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break End::Backend,
                    Ok(n) => {
                        frames.feed(&buf[..n]);
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break End::Client;
                        }
                    }
                },
                _ = &mut up => break End::Client,
                () = &mut drain, if !draining => {
                    draining = true;
                    drain_deadline = Some(tokio::time::Instant::now() + FRAME_END_WAIT);
                }
                () = deadline => break End::Drain,
            }
        }
    };
    match end {
        // The backend ended the stream: pass the end on.
        End::Backend => {
            let _ = cw.shutdown().await;
            return;
        }
        // The client is gone (or half-closed): end the backend side too.
        End::Client => {
            let _ = bw.shutdown().await;
            return;
        }
        End::Drain => {}
    }
    // Draining: close the backend side, then say goodbye to the client.
    let _ = bw.shutdown().await;
    drop(guard);
    if websocket && frames.at_boundary() {
        let _ = cw.write_all(&close_frame_going_away()).await;
        let _ = cw.flush().await;
        // Wait (bounded) for the client's close frame, as RFC 6455 asks, so the client
        // sees a clean closing handshake rather than a reset.
        let mut from_client = Frames::default();
        let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, async {
            loop {
                match cr.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if from_client.feed(&buf[..n]) {
                            return;
                        }
                    }
                }
            }
        })
        .await;
    }
    let _ = cw.shutdown().await;
}

/// An unmasked (server-to-client) close frame with status 1001 "going away".
fn close_frame_going_away() -> Vec<u8> {
    let reason = b"going away";
    let mut f = Vec::with_capacity(4 + reason.len());
    f.push(0x88); // FIN + opcode 8 (close)
    f.push(2 + reason.len() as u8);
    f.extend_from_slice(&1001u16.to_be_bytes());
    f.extend_from_slice(reason);
    f
}

/// Tracks WebSocket frame boundaries in a byte stream (RFC 6455 section 5.2), so a
/// close frame can be injected between frames, never inside one.
#[derive(Default)]
struct Frames {
    /// Bytes of the current frame header read so far.
    head: [u8; 14],
    have: usize,
    /// Payload bytes left in the current frame (once its header is complete).
    left: u64,
}

impl Frames {
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }

    /// Length of the header starting with `head[..have]`, once known.
    fn head_len(&self) -> Option<usize> {
        if self.have < 2 {
            return None;
        }
        let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
        let ext = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        Some(2 + ext + mask)
    }

    /// Feeds bytes; returns true when a close frame's header was seen.
    fn feed(&mut self, mut data: &[u8]) -> bool {
        let mut saw_close = false;
        while !data.is_empty() {
            if self.left > 0 {
                let n = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.left -= n as u64;
                data = &data[n..];
                continue;
            }
            self.head[self.have] = data[0];
            self.have += 1;
            data = &data[1..];
            if let Some(len) = self.head_len()
                && self.have == len
            {
                let payload = match self.head[1] & 0x7f {
                    126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
                    127 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.head[2..10]);
                        u64::from_be_bytes(b)
                    }
                    n => u64::from(n),
                };
                if self.head[0] & 0x0f == 0x8 {
                    saw_close = true;
                }
                self.have = 0;
                self.left = payload;
            }
        }
        saw_close
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_boundaries() {
        let mut f = Frames::default();
        assert!(f.at_boundary());
        // A 5-byte text frame, fed in pieces.
        let frame = [0x81, 5, b'h', b'e', b'l', b'l', b'o'];
        assert!(!f.feed(&frame[..1]));
        assert!(!f.at_boundary());
        f.feed(&frame[1..4]);
        assert!(!f.at_boundary());
        f.feed(&frame[4..]);
        assert!(f.at_boundary());
        // A 300-byte masked binary frame then a close frame in one read.
        let mut two = vec![0x82, 0x80 | 126, 1, 44, 1, 2, 3, 4];
        two.extend(std::iter::repeat_n(0u8, 300));
        two.extend_from_slice(&close_frame_going_away());
        assert!(f.feed(&two));
        assert!(f.at_boundary());
    }

    #[test]
    fn close_frame_layout() {
        let f = close_frame_going_away();
        assert_eq!(&f[..4], &[0x88, 12, 0x03, 0xE9]);
    }
}
