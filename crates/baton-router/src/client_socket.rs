//! A client connection's socket, registered with the runtime only once it has to wait.
//!
//! Registering a socket with epoll and removing it again costs two system calls per
//! connection. The request on a new connection is usually there by the time it is
//! accepted, and a response usually fits the socket buffer, so a request answered at
//! once on a connection that then closes (`Connection: close`) never needs readiness
//! events: it is read and answered with plain non-blocking calls. The first read or
//! write that would block registers the socket, and from then on it is an ordinary
//! tokio socket.

use std::io::{self, Read, Write};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub(crate) struct ClientSocket {
    state: State,
}

enum State {
    /// Non-blocking, not registered yet.
    Plain(std::net::TcpStream),
    Registered(TcpStream),
    /// Registration failed; every call fails.
    Failed,
}

impl ClientSocket {
    /// `stream` must be in non-blocking mode.
    pub fn new(stream: std::net::TcpStream) -> Self {
        ClientSocket {
            state: State::Plain(stream),
        }
    }

    /// The socket as a registered tokio socket (registering it now if need be).
    pub fn registered(&mut self) -> io::Result<&mut TcpStream> {
        if let State::Plain(_) = self.state {
            let State::Plain(s) = std::mem::replace(&mut self.state, State::Failed) else {
                unreachable!("checked above");
            };
            self.state = State::Registered(TcpStream::from_std(s)?);
        }
        match &mut self.state {
            State::Registered(s) => Ok(s),
            _ => Err(io::Error::other(
                "the client socket could not be registered",
            )),
        }
    }

    /// For a protocol served by someone else from here on (hyper).
    pub fn into_tokio(mut self) -> io::Result<TcpStream> {
        self.registered()?;
        match self.state {
            State::Registered(s) => Ok(s),
            _ => Err(io::Error::other(
                "the client socket could not be registered",
            )),
        }
    }

    /// Reads what is there now, appending to `buf`: `Ok(None)` when nothing is.
    pub fn try_read_buf(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        let r = match &mut self.state {
            State::Plain(s) => read_appending(buf, |b| s.read(b)),
            State::Registered(s) => read_appending(buf, |b| s.try_read(b)),
            State::Failed => return Err(io::Error::other("client socket unusable")),
        };
        match r {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads at least one byte (or the end), appending to `buf`.
    pub async fn read_buf(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        if let State::Plain(_) = self.state
            && let Some(n) = self.try_read_buf(buf)?
        {
            return Ok(n);
        }
        if buf.capacity() == buf.len() {
            buf.reserve(4096);
        }
        self.registered()?.read_buf(buf).await
    }

    /// Waits until the socket has something to read (or has ended), without a buffer.
    pub async fn readable(&mut self) -> io::Result<()> {
        self.registered()?.readable().await
    }

    pub async fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        if let State::Plain(s) = &mut self.state {
            while !data.is_empty() {
                match s.write(data) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => data = &data[n..],
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            if data.is_empty() {
                return Ok(());
            }
        }
        self.registered()?.write_all(data).await
    }
}

/// Reads with `read` into the spare room of `buf` (made at least 4 KiB), keeping what
/// was read.
fn read_appending(
    buf: &mut Vec<u8>,
    read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
) -> io::Result<usize> {
    let old = buf.len();
    if buf.capacity() - old < 1024 {
        buf.reserve(4096);
    }
    // Safe code cannot read into uninitialised memory: zero the room first (a few
    // hundred bytes to a few KiB, once per read that happens without waiting).
    buf.resize(buf.capacity(), 0);
    let r = read(&mut buf[old..]);
    let n = *r.as_ref().unwrap_or(&0);
    buf.truncate(old + n);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_and_writes_without_registering_until_something_waits() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut peer = std::net::TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        let mut sock = ClientSocket::new(accepted);

        let mut buf = Vec::new();
        assert_eq!(
            sock.try_read_buf(&mut buf).unwrap(),
            None,
            "nothing sent yet"
        );
        assert!(matches!(sock.state, State::Plain(_)));
        peer.write_all(b"hello").unwrap();
        // Polls without waiting (so without registering) until the bytes are there.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while buf.len() < 5 {
            assert_ne!(sock.try_read_buf(&mut buf).unwrap(), Some(0), "closed");
            assert!(std::time::Instant::now() < deadline, "no bytes in time");
            tokio::task::yield_now().await;
        }
        assert_eq!(buf, b"hello");
        sock.write_all(b"world").await.unwrap();
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"world");

        assert!(matches!(sock.state, State::Plain(_)), "nothing had to wait");

        // A read with nothing there registers the socket and waits (polled once here).
        let mut more = Vec::new();
        tokio::select! {
            biased;
            r = sock.read_buf(&mut more) => panic!("read {r:?} though nothing was sent"),
            () = std::future::ready(()) => {}
        }
        assert!(matches!(sock.state, State::Registered(_)));
        peer.write_all(b"!").unwrap();
        let n = sock.read_buf(&mut more).await.unwrap();
        assert_eq!((n, more.as_slice()), (1, &b"!"[..]));
    }
}
