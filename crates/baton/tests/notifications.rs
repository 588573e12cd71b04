//! Webhooks end to end: a real receiver on loopback gets every notice of a
//! canary in order, signed; a receiver that never answers and one that is
//! down change nothing in the rollout, and their failures show in status and
//! the event log.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use hmac::{KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;

const SECRET: &str = "test-webhook-secret";

/// What the receiver got: (headers, body) per request.
type Received = Arc<Mutex<Vec<(http::HeaderMap, Bytes)>>>;

/// An HTTP receiver on a port of its own; `hang`: never answers.
fn receiver(rt: &tokio::runtime::Runtime, hang: bool) -> (SocketAddr, Received) {
    let got: Received = Arc::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let store = got.clone();
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let store = store.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        store.lock().unwrap().push((parts.headers, body));
                        if hang {
                            std::future::pending::<()>().await;
                        }
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, got)
}

fn signature(timestamp: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

#[test]
fn webhooks_get_every_notice_in_order_and_never_hold_a_rollout_back() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (ok, got) = receiver(&rt, false);
    let (slow, slow_got) = receiver(&rt, true);
    let down = SocketAddr::from(([127, 0, 0, 1], free_port()));

    let mut h = Harness::without_server();
    h.serve_env
        .push(("BATON_TEST_WEBHOOK_SECRET".into(), SECRET.into()));
    h.start_server();
    let hooks = format!(
        r#"notifications:
  webhooks:
    - name: audit-sink
      url: http://{ok}/hook
      secret_env: BATON_TEST_WEBHOOK_SECRET
    - name: chat
      url: http://{slow}/slack
      format: slack
      events: [rolled_back, succeeded]
      timeout: 1s
    - name: pager
      url: http://{down}/
      timeout: 1s
"#
    );
    let path = h.write_spec_with(
        "demo",
        2,
        "  canary:\n    steps:\n      - set_weight: 50\n      - pause: { until: approved }\n      - set_weight: 100",
        &hooks,
    );
    h.cli_ok(&["apply", "-f", path_str(&path)]);
    h.cli_ok(&["deploy", "demo", "v1", "--wait"]);
    h.cli_ok(&["deploy", "demo", "v2"]);
    wait_until("the approval gate", Duration::from_secs(60), || {
        h.status("demo")["phase"] == "awaiting_approval"
    });
    h.cli_ok(&["approve", "demo"]);
    // The rollout ends on time though one receiver never answers and another
    // is down.
    wait_until_stable_on(&h, "demo", "v2", "the canary to finish");

    // Every notice of v2's rollout, in order, each signed.
    let expected = [
        "started",
        "step",
        "step",
        "waiting_for_approval",
        "step",
        "succeeded",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got.lock().unwrap().len() < 2 + expected.len() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let received = got.lock().unwrap().clone();
    let bodies: Vec<Value> = received
        .iter()
        .map(|(_, b)| serde_json::from_slice(b).unwrap())
        .collect();
    let v2: Vec<&str> = bodies
        .iter()
        .filter(|b| b["version"] == "v2")
        .map(|b| b["event"].as_str().unwrap())
        .collect();
    assert_eq!(v2, expected, "{bodies:#?}");
    let sequences: Vec<u64> = bodies
        .iter()
        .map(|b| b["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, (1..=sequences.len() as u64).collect::<Vec<_>>());
    for (headers, body) in &received {
        let ts = headers["x-baton-timestamp"].to_str().unwrap();
        assert_eq!(headers["x-baton-signature"], signature(ts, body).as_str());
        assert_eq!(headers["content-type"], "application/json");
    }
    let approval = bodies
        .iter()
        .find(|b| b["event"] == "waiting_for_approval")
        .unwrap();
    assert_eq!(approval["from_version"], "v1");
    assert_eq!(approval["app"], "demo");

    // The chat webhook only wants the end of rollouts, as Slack text.
    wait_until("the chat notice", Duration::from_secs(30), || {
        !slow_got.lock().unwrap().is_empty()
    });
    let (_, first) = slow_got.lock().unwrap()[0].clone();
    let text: Value = serde_json::from_slice(&first).unwrap();
    assert!(
        text["text"].as_str().unwrap().contains("*demo* (test)"),
        "{text}"
    );
    // Failures are visible: in status, and in the event log.
    wait_until("the pager's failure", Duration::from_secs(60), || {
        h.events("demo").iter().any(|e| {
            e["kind"] == "notification_failed"
                && e["message"].as_str().unwrap().contains("webhook pager")
        })
    });
    let s = h.status("demo");
    let pager = s["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "pager")
        .unwrap();
    assert!(pager["failed"].as_u64().unwrap() >= 1, "{s}");
    assert!(pager["last_error"].as_str().is_some(), "{s}");
    let text = h.cli_ok(&["status", "demo"]);
    assert!(text.contains("webhook pager: 0 delivered"), "{text}");
}
