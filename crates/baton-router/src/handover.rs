//! Hitless replacement of the router process (a new binary, same sockets).
//!
//! A running router listens on a handover socket (a unix socket, mode 0600: next to
//! the admin socket as `<admin-socket>.handover`, or where `baton router
//! --handover-socket` says). A new router started to take over connects to it and:
//!
//! 1. sends `hello` (protocol version, pid, build);
//! 2. receives `offer`: the live [`RoutingConfig`] and each listening socket's address,
//!    the sockets themselves attached as descriptors (`SCM_RIGHTS`). From here the old
//!    router refuses pushes ([`RouterError::HandingOver`], which control planes retry);
//! 3. applies the config on the inherited sockets (binding only what it lacks) and
//!    starts accepting on them: both processes now accept from the same kernel queues;
//! 4. sends `ready` (with the drain grace it asks for);
//! 5. receives `draining`: the old router has committed to stepping down. The new one
//!    then binds the admin and handover socket paths afresh, so control planes reach it.
//!
//! The old router then stops accepting (the sockets stay open in the new process, so
//! no waiting connection is lost), ends every HTTP/1 connection after its next response
//! (`Connection: close`), closes connections still idle after [`IDLE_CLOSE_AFTER`],
//! lets WebSockets and other upgraded streams run until the drain grace, closes those
//! left with 1001 "going away", and exits. If the new router goes away or answers
//! anything else before step 5, the old one abandons the handover and serves on,
//! accepting pushes again, as if nothing happened.
//!
//! Messages are framed as a 4-byte big-endian length and that many bytes of JSON.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::config::RoutingConfig;
use crate::error::RouterError;
use crate::router::{Offered, Router};

/// Version of the handover protocol; a router refuses to hand over to another version.
pub const PROTOCOL: u32 = 1;

/// Largest message (a routing config with many apps fits many times over).
const MAX_FRAME: usize = 16 << 20;

/// Most descriptors one message may carry.
const MAX_FDS: usize = 253;

/// Longest wait for one message of the other side, except `ready`.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait of the old router for the new one's `ready` (its start-up: applying the
/// config and starting its accept loops).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// After stepping down, how long connections that wait for a request are left open
/// for it (it is then answered with `Connection: close`) before they are closed.
pub const IDLE_CLOSE_AFTER: Duration = Duration::from_secs(1);

/// The handover socket of the router whose admin socket is `admin_socket`.
pub fn socket_path(admin_socket: &Path) -> PathBuf {
    let mut p = admin_socket.as_os_str().to_owned();
    p.push(".handover");
    PathBuf::from(p)
}

pub use crate::build_info::{build_id, build_of};

/// What a listening socket handed over is for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SocketKind {
    /// User traffic of the app named by [`SocketInfo::name`].
    App,
    /// The standalone router's `/metrics` endpoint.
    Metrics,
}

/// One descriptor of an `offer`, in the order they are attached.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(crate) struct SocketInfo {
    pub kind: SocketKind,
    pub name: String,
    /// The address the config asked for (may have port 0).
    pub requested: SocketAddr,
    /// The address the socket is bound to.
    pub bound: SocketAddr,
}

/// A message of the handover protocol.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Message {
    /// New to old: asks to take over.
    Hello {
        protocol: u32,
        pid: u32,
        build: String,
    },
    /// Old to new: the live config and the listening sockets (attached).
    Offer {
        protocol: u32,
        pid: u32,
        build: String,
        config: RoutingConfig,
        sockets: Vec<SocketInfo>,
    },
    /// Old to new: no handover (another one is under way, the router is stopping, or
    /// another protocol version).
    Refused { reason: String },
    /// New to old: accepting on every socket; the old one may step down, letting open
    /// streams run for `drain_grace_ms` (its own default when absent).
    Ready { drain_grace_ms: Option<u64> },
    /// Old to new: stepping down now.
    Draining,
}

/// A message as bytes on the wire: its length (u32, big-endian), then its JSON.
pub(crate) fn encode(msg: &Message) -> std::io::Result<Vec<u8>> {
    let json = serde_json::to_vec(msg)?;
    if json.len() > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "handover message of {} bytes is over the limit of {MAX_FRAME}",
            json.len()
        )));
    }
    let len = u32::try_from(json.len()).map_err(std::io::Error::other)?;
    let mut frame = Vec::with_capacity(4 + json.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&json);
    Ok(frame)
}

/// Takes the first whole message off the front of `buf`, if it holds one.
pub(crate) fn decode(buf: &mut Vec<u8>) -> std::io::Result<Option<Message>> {
    let Some(head) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*head) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("handover message of {len} bytes is over the limit of {MAX_FRAME}"),
        ));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let msg = serde_json::from_slice(&buf[4..4 + len]).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad handover message: {e}"),
        )
    });
    buf.drain(..4 + len);
    msg.map(Some)
}

/// One end of a handover connection: messages with descriptors attached.
pub(crate) struct Conn {
    stream: UnixStream,
    /// Bytes read past the last whole message.
    buf: Vec<u8>,
    /// Descriptors received with the bytes of the message being read.
    fds: Vec<OwnedFd>,
}

impl Conn {
    pub(crate) fn new(stream: UnixStream) -> Self {
        Conn {
            stream,
            buf: Vec::new(),
            fds: Vec::new(),
        }
    }

    /// Sends `msg` with `fds` attached to its first bytes.
    pub(crate) async fn send(
        &mut self,
        msg: &Message,
        fds: &[BorrowedFd<'_>],
    ) -> std::io::Result<()> {
        let frame = encode(msg)?;
        let mut sent = 0;
        if !fds.is_empty() {
            if fds.len() > MAX_FDS {
                return Err(std::io::Error::other(format!(
                    "{} sockets to hand over, more than {MAX_FDS}",
                    fds.len()
                )));
            }
            let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !control.push(SendAncillaryMessage::ScmRights(fds)) {
                return Err(std::io::Error::other("no room for the descriptors"));
            }
            let stream = &self.stream;
            sent = stream
                .async_io(Interest::WRITABLE, || {
                    rustix::net::sendmsg(
                        stream.as_fd(),
                        &[IoSlice::new(&frame)],
                        &mut control,
                        SendFlags::NOSIGNAL,
                    )
                    .map_err(std::io::Error::from)
                })
                .await?;
        }
        self.stream.write_all(&frame[sent..]).await?;
        Ok(())
    }

    /// The next message, with the descriptors that came with it.
    pub(crate) async fn recv(&mut self) -> std::io::Result<(Message, Vec<OwnedFd>)> {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some(msg) = decode(&mut self.buf)? {
                return Ok((msg, std::mem::take(&mut self.fds)));
            }
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let stream = &self.stream;
            let got = stream
                .async_io(Interest::READABLE, || {
                    rustix::net::recvmsg(
                        stream.as_fd(),
                        &mut [IoSliceMut::new(&mut chunk)],
                        &mut control,
                        RecvFlags::CMSG_CLOEXEC,
                    )
                    .map_err(std::io::Error::from)
                })
                .await?;
            for m in control.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = m {
                    self.fds.extend(fds);
                }
            }
            if got.flags.contains(ReturnFlags::CTRUNC) {
                return Err(std::io::Error::other(
                    "descriptors were lost in transit (too many, or the open-file limit)",
                ));
            }
            if got.bytes == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the other router closed the handover connection",
                ));
            }
            self.buf.extend_from_slice(&chunk[..got.bytes]);
        }
    }

    async fn recv_within(&mut self, limit: Duration) -> std::io::Result<(Message, Vec<OwnedFd>)> {
        tokio::time::timeout(limit, self.recv())
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {limit:?}"),
                )
            })?
    }
}

/// Binds the handover socket at `path` (mode 0600), replacing a file left there.
pub(crate) fn bind(path: &Path) -> Result<UnixListener, RouterError> {
    crate::admin::bind_socket_file(path)
}

/// The successor a router handed over to.
#[derive(Debug)]
pub(crate) struct Successor {
    pub pid: u32,
    pub build: String,
    /// How long open streams may run before they get 1001 (`None`: the apps' own).
    pub drain_grace: Option<Duration>,
}

/// Sockets a router hands over besides its apps' (the standalone `/metrics` one).
pub(crate) struct Extra {
    pub info: SocketInfo,
    pub socket: std::net::TcpListener,
}

/// Serves take-over requests on `listener`, one at a time, until `stop` is cancelled
/// (`None`) or one succeeded: then the router has stepped down (see
/// [`Router::step_down`]) and the caller drains it.
pub(crate) async fn serve(
    listener: UnixListener,
    router: Router,
    extras: Vec<Extra>,
    stop: CancellationToken,
) -> Option<Successor> {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return None,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "handover socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let mut conn = Conn::new(stream);
        let attempt = tokio::select! {
            () = stop.cancelled() => Err("the router is stopping".to_string()),
            r = offer(&mut conn, &router, &extras) => r,
        };
        match attempt {
            Ok(s) => return Some(s),
            Err(reason) => {
                router.abandon_handover();
                tracing::warn!(%reason, "a new router did not take over; serving on");
            }
        }
    }
}

/// The old router's side of one handover; `Err` leaves it serving.
async fn offer(conn: &mut Conn, router: &Router, extras: &[Extra]) -> Result<Successor, String> {
    let (hello, _) = conn
        .recv_within(STEP_TIMEOUT)
        .await
        .map_err(|e| format!("reading its hello: {e}"))?;
    let Message::Hello {
        protocol,
        pid,
        build,
    } = hello
    else {
        return Err(format!("expected hello, got {hello:?}"));
    };
    let refuse = async |conn: &mut Conn, reason: String| {
        let _ = conn
            .send(
                &Message::Refused {
                    reason: reason.clone(),
                },
                &[],
            )
            .await;
        reason
    };
    if protocol != PROTOCOL {
        let reason = format!("handover protocol {protocol} asked, this router speaks {PROTOCOL}");
        return Err(refuse(conn, reason).await);
    }
    tracing::info!(successor_pid = pid, successor_build = %build, "a new router asks to take over");
    let (config, offered) = match router.begin_handover() {
        Ok(x) => x,
        // The router is stopping. (No other handover can be under way: `serve` runs
        // one at a time, so the caller's `abandon_handover` undoes nothing else.)
        Err(e) => return Err(refuse(conn, e.to_string()).await),
    };
    let mut sockets = Vec::with_capacity(offered.len() + extras.len());
    let mut fds: Vec<BorrowedFd<'_>> = Vec::with_capacity(offered.len() + extras.len());
    for o in &offered {
        sockets.push(SocketInfo {
            kind: SocketKind::App,
            name: o.app.clone(),
            requested: o.requested,
            bound: o.bound,
        });
        fds.push(o.socket.as_fd());
    }
    for e in extras {
        sockets.push(e.info.clone());
        fds.push(e.socket.as_fd());
    }
    let generation = config.generation;
    let msg = Message::Offer {
        protocol: PROTOCOL,
        pid: std::process::id(),
        build: build_id().to_string(),
        config,
        sockets,
    };
    conn.send(&msg, &fds)
        .await
        .map_err(|e| format!("sending the offer: {e}"))?;
    drop(fds);
    // Our duplicates: the new router holds its own now.
    drop(offered);
    let (ready, _) = conn
        .recv_within(READY_TIMEOUT)
        .await
        .map_err(|e| format!("waiting for it to be ready: {e}"))?;
    let Message::Ready { drain_grace_ms } = ready else {
        return Err(format!("expected ready, got {ready:?}"));
    };
    conn.send(&Message::Draining, &[])
        .await
        .map_err(|e| format!("confirming the handover: {e}"))?;
    router.step_down();
    tracing::info!(
        successor_pid = pid,
        successor_build = %build,
        generation,
        "handed over to a new router; draining"
    );
    Ok(Successor {
        pid,
        build,
        drain_grace: drain_grace_ms.map(Duration::from_millis),
    })
}

/// What a new router received from the one it takes over from.
pub(crate) struct Predecessor {
    conn: Conn,
    path: PathBuf,
    pub pid: u32,
    pub build: String,
    pub config: RoutingConfig,
    /// The apps' listening sockets.
    pub apps: Vec<Offered>,
    /// Other listening sockets (by kind).
    pub extras: Vec<Extra>,
}

impl Predecessor {
    /// Connects to the router serving the handover socket at `path` and receives its
    /// config and sockets. From here it refuses pushes, until [`Predecessor::ready`]
    /// or until this is dropped (then it serves on as before).
    pub(crate) async fn connect(path: &Path) -> Result<Predecessor, RouterError> {
        let fail = |reason: String| RouterError::Handover {
            socket: path.to_path_buf(),
            reason,
        };
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| fail(format!("no router answers there ({e})")))?;
        let mut conn = Conn::new(stream);
        let hello = Message::Hello {
            protocol: PROTOCOL,
            pid: std::process::id(),
            build: build_id().to_string(),
        };
        conn.send(&hello, &[])
            .await
            .map_err(|e| fail(format!("sending hello: {e}")))?;
        let (answer, fds) = conn
            .recv_within(STEP_TIMEOUT)
            .await
            .map_err(|e| fail(format!("waiting for its offer: {e}")))?;
        let (pid, build, config, sockets) = match answer {
            Message::Offer {
                protocol,
                pid,
                build,
                config,
                sockets,
            } if protocol == PROTOCOL => (pid, build, config, sockets),
            Message::Refused { reason } => return Err(fail(format!("it refused: {reason}"))),
            other => return Err(fail(format!("unexpected answer {other:?}"))),
        };
        if fds.len() != sockets.len() {
            return Err(fail(format!(
                "it described {} sockets but sent {} descriptors",
                sockets.len(),
                fds.len()
            )));
        }
        let mut apps = Vec::new();
        let mut extras = Vec::new();
        for (info, fd) in sockets.into_iter().zip(fds) {
            let socket = std::net::TcpListener::from(fd);
            // A TCP socket bound where it says, or not what we were told.
            match socket.local_addr() {
                Ok(a) if a == info.bound => {}
                other => {
                    return Err(fail(format!(
                        "the socket of {} is not bound to {} ({other:?})",
                        info.name, info.bound
                    )));
                }
            }
            match info.kind {
                SocketKind::App => apps.push(Offered {
                    app: info.name,
                    requested: info.requested,
                    bound: info.bound,
                    socket,
                }),
                SocketKind::Metrics => extras.push(Extra { info, socket }),
            }
        }
        tracing::info!(
            predecessor_pid = pid,
            predecessor_build = %build,
            generation = config.generation,
            sockets = apps.len() + extras.len(),
            "received the listening sockets of the running router"
        );
        Ok(Predecessor {
            conn,
            path: path.to_path_buf(),
            pid,
            build,
            config,
            apps,
            extras,
        })
    }

    /// Tells the old router that this one accepts on every socket, and waits for it to
    /// step down. `drain_grace`: how long it keeps open streams (WebSockets).
    pub(crate) async fn ready(mut self, drain_grace: Option<Duration>) -> Result<(), RouterError> {
        let fail = |reason: String| RouterError::Handover {
            socket: self.path.clone(),
            reason,
        };
        let ready = Message::Ready {
            drain_grace_ms: drain_grace.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        };
        if let Err(e) = self.conn.send(&ready, &[]).await {
            return Err(fail(format!("sending ready: {e}")));
        }
        match self.conn.recv_within(STEP_TIMEOUT).await {
            Ok((Message::Draining, _)) => Ok(()),
            Ok((other, _)) => Err(fail(format!("unexpected answer {other:?}"))),
            Err(e) => Err(fail(format!("waiting for it to step down: {e}"))),
        }
    }
}

/// Drains a router that handed over: its connections end after their next response;
/// those still waiting for a request after [`IDLE_CLOSE_AFTER`] are closed; upgraded
/// streams (WebSockets) run until `grace` from now, then get 1001 "going away";
/// everything is given [`crate::DRAIN_DEADLINE`] more to finish.
pub(crate) async fn drain(router: &Router, grace: Duration) {
    let start = tokio::time::Instant::now();
    let quiet = |limit: Duration| async move {
        // Accept loops have stopped: only connections and streams are tracked now.
        router.close_tracker();
        tokio::time::timeout(limit, router.wait_tracked())
            .await
            .is_ok()
    };
    if !quiet(IDLE_CLOSE_AFTER.min(grace)).await {
        router.close_idle();
        let left = grace.saturating_sub(start.elapsed());
        if !quiet(left).await {
            tracing::info!(
                open = router.open_tasks(),
                "drain grace over: closing open streams"
            );
        }
    }
    router.shutdown(crate::DRAIN_DEADLINE).await;
    tracing::info!(
        elapsed_ms = start.elapsed().as_millis() as u64,
        "drained after the handover"
    );
}

/// Take-overs served in the background while a router runs ([`serve`]).
pub(crate) struct Service {
    task: Option<tokio::task::JoinHandle<Option<Successor>>>,
    stop: CancellationToken,
}

impl Service {
    /// Serves take-overs on `listener` (with `extras`, the sockets handed over besides
    /// the apps'). Without a listener (`None`, or one that could not be bound: logged)
    /// this router can only be restarted.
    pub(crate) fn start(
        listener: Option<Result<UnixListener, RouterError>>,
        router: &Router,
        extras: Vec<Extra>,
    ) -> Service {
        let stop = CancellationToken::new();
        let task = match listener {
            Some(Ok(l)) => Some(tokio::spawn(serve(l, router.clone(), extras, stop.clone()))),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot serve handovers; this router can only be restarted");
                None
            }
            None => None,
        };
        Service { task, stop }
    }

    /// Resolves once a successor has taken over; never when none can.
    pub(crate) async fn successor(&mut self) -> Successor {
        if let Some(task) = self.task.as_mut() {
            let r = task.await;
            self.task = None;
            match r {
                Ok(Some(s)) => return s,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "the handover task failed"),
            }
        }
        std::future::pending().await
    }

    /// Stops serving take-overs.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }
}

/// How a router ends its traffic: after handing over, it drains for its successor
/// (see [`drain`]); otherwise it stops, letting in-flight requests finish within
/// [`crate::DRAIN_DEADLINE`].
pub(crate) async fn finish(router: &Router, successor: Option<&Successor>) {
    match successor {
        Some(s) => {
            let grace = s
                .drain_grace
                .unwrap_or_else(|| default_grace(&router.config()));
            drain(router, grace).await;
        }
        None => {
            router.shutdown(crate::DRAIN_DEADLINE).await;
        }
    }
}

/// The drain grace a router uses when its successor names none: the longest
/// `stream_drain_grace_ms` of its apps.
pub(crate) fn default_grace(cfg: &RoutingConfig) -> Duration {
    let default = crate::limits::AppLimits::default().stream_drain_grace_ms;
    Duration::from_millis(
        cfg.apps
            .iter()
            .map(|a| a.limits.stream_drain_grace_ms)
            .max()
            .unwrap_or(default),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> Message {
        Message::Offer {
            protocol: PROTOCOL,
            pid: 7,
            build: "0.1.0+1.2".into(),
            config: RoutingConfig {
                generation: 42,
                apps: Vec::new(),
            },
            sockets: vec![SocketInfo {
                kind: SocketKind::App,
                name: "web".into(),
                requested: "127.0.0.1:0".parse().unwrap(),
                bound: "127.0.0.1:8080".parse().unwrap(),
            }],
        }
    }

    #[test]
    fn a_frame_is_a_length_then_json() {
        let frame = encode(&Message::Draining).unwrap();
        let json = br#"{"type":"draining"}"#;
        assert_eq!(&frame[..4], &(json.len() as u32).to_be_bytes());
        assert_eq!(&frame[4..], json);
    }

    #[test]
    fn frames_decode_whole_in_order_from_any_split() {
        let msgs = [
            Message::Hello {
                protocol: PROTOCOL,
                pid: 1,
                build: "b".into(),
            },
            offer(),
            Message::Ready {
                drain_grace_ms: Some(1500),
            },
            Message::Draining,
        ];
        let wire: Vec<u8> = msgs.iter().flat_map(|m| encode(m).unwrap()).collect();
        for split in [1, 3, 4, 5, 17, wire.len()] {
            let mut buf = Vec::new();
            let mut got = Vec::new();
            for piece in wire.chunks(split) {
                buf.extend_from_slice(piece);
                while let Some(m) = decode(&mut buf).unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got, msgs, "split into pieces of {split}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn oversized_and_garbled_frames_are_errors() {
        let mut buf = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        assert!(decode(&mut buf).is_err());
        let mut buf = 5u32.to_be_bytes().to_vec();
        buf.extend_from_slice(b"{nope");
        assert!(decode(&mut buf).is_err());
        let mut buf = 9u32.to_be_bytes().to_vec();
        buf.extend_from_slice(br#"{"type":"#);
        assert!(decode(&mut buf).unwrap().is_none(), "a partial frame waits");
    }

    #[test]
    fn the_handover_socket_sits_beside_the_admin_socket() {
        assert_eq!(
            socket_path(Path::new("/data/router.sock")),
            Path::new("/data/router.sock.handover")
        );
    }

    /// A listening socket sent over a socket pair arrives as the same socket: a
    /// connection made to it is accepted through the received descriptor.
    #[tokio::test]
    async fn listening_sockets_travel_with_their_message() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Conn::new(a), Conn::new(b));
        let l1 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        a.send(&offer(), &[l1.as_fd(), l2.as_fd()]).await.unwrap();
        a.send(&Message::Draining, &[]).await.unwrap();
        let (msg, fds) = b.recv().await.unwrap();
        assert_eq!(msg, offer());
        assert_eq!(fds.len(), 2);
        let got: Vec<std::net::TcpListener> =
            fds.into_iter().map(std::net::TcpListener::from).collect();
        assert_eq!(got[0].local_addr().unwrap(), l1.local_addr().unwrap());
        assert_eq!(got[1].local_addr().unwrap(), l2.local_addr().unwrap());
        drop(l1);
        let _client = std::net::TcpStream::connect(got[0].local_addr().unwrap()).unwrap();
        got[0].accept().unwrap();
        let (msg, fds) = b.recv().await.unwrap();
        assert_eq!(msg, Message::Draining);
        assert!(fds.is_empty());
    }

    #[tokio::test]
    async fn a_closed_peer_is_an_error_not_a_hang() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut b = Conn::new(b);
        let mut a = a;
        a.write_all(&encode(&Message::Draining).unwrap()[..3])
            .await
            .unwrap();
        drop(a);
        let e = b.recv().await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn builds_differ_with_the_executable() {
        let dir = std::env::temp_dir().join(format!("baton-build-id-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("baton");
        std::fs::write(&exe, b"one").unwrap();
        let one = build_of(&exe);
        std::fs::write(&exe, b"other").unwrap();
        let other = build_of(&exe);
        assert_ne!(one, other);
        assert!(one.starts_with(env!("CARGO_PKG_VERSION")));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!build_id().is_empty());
    }
}
