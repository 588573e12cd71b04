//! Helpers for `bench/router.sh`.
//!
//! `bench backend PORT`: a minimal HTTP/1.1 responder (one thread, fixed 13-byte
//! answer, keep-alive unless the request says `Connection: close`) so the backend is
//! never what limits a proxy benchmark.
//! `bench router LISTEN UPSTREAM WORKERS`: baton's standalone router, for builds
//! of the `baton` binary without `--workers`.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nHello, world!";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match args.first().map(String::as_str) {
        Some("backend") => {
            let port: u16 = args.get(1).and_then(|p| p.parse().ok()).expect("PORT");
            rt.block_on(backend(port));
        }
        Some("router") => {
            let listen: SocketAddr = args.get(1).and_then(|a| a.parse().ok()).expect("LISTEN");
            let upstream: SocketAddr = args.get(2).and_then(|a| a.parse().ok()).expect("UPSTREAM");
            let workers: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1);
            let stop = CancellationToken::new();
            rt.block_on(async {
                let token = stop.clone();
                tokio::spawn(async move {
                    let _ = tokio::signal::ctrl_c().await;
                    token.cancel();
                });
                let opts = baton_router::StandaloneOptions {
                    listen,
                    upstreams: vec![upstream],
                    workers: Some(workers),
                    metrics_listen: None,
                    balance: Default::default(),
                };
                if let Err(e) = baton_router::run_standalone_with(opts, stop).await {
                    eprintln!("router: {e}");
                    std::process::exit(1);
                }
            });
        }
        _ => {
            eprintln!("usage: bench backend PORT | bench router LISTEN UPSTREAM WORKERS");
            std::process::exit(2);
        }
    }
}

async fn backend(port: u16) {
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            let mut have = 0;
            let mut out = Vec::with_capacity(4096);
            loop {
                match s.read(&mut buf[have..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => have += n,
                }
                let mut close = false;
                let mut start = 0;
                while let Some(end) = buf[start..have].windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = &buf[start..start + end];
                    if head
                        .windows(17)
                        .any(|w| w.eq_ignore_ascii_case(b"connection: close"))
                    {
                        close = true;
                    }
                    out.extend_from_slice(ANSWER);
                    start += end + 4;
                }
                buf.copy_within(start..have, 0);
                have -= start;
                if have == buf.len() {
                    return; // a head larger than the buffer: not a benchmark request
                }
                if !out.is_empty() {
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                }
                if close {
                    return;
                }
            }
        });
    }
}
