//! The dashboard in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven over WebDriver): log in with a token, watch a canary
//! advance with its charts moving, approve its gate and see the record, abort
//! another and see the rollback, see a failed action's error, and as a viewer
//! see no action at all while the API refuses a crafted request. Screenshots of
//! each view are kept in `target/tmp/dashboard-screenshots/`.

mod common;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton::loadgen::{self, LoadConfig};
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a port of its own, in a process group of its own with the
/// browsers it starts: the whole group ends with the test, even when it fails.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.0.wait();
    }
}

fn screenshots() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// Waits for `cond` (an async check), up to `secs`.
async fn until<F, Fut>(what: &str, secs: u64, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {secs}s waiting for {what}");
}

async fn text_of(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn count(c: &Client, css: &str) -> usize {
    c.find_all(Locator::Css(css)).await.map_or(0, |v| v.len())
}

async fn login(c: &Client, api: SocketAddr, token: &str) {
    c.goto(&format!("http://{api}/")).await.unwrap();
    c.execute("sessionStorage.clear()", vec![]).await.unwrap();
    c.goto(&format!("http://{api}/ui/")).await.unwrap();
    let field = c.wait().for_element(Locator::Id("token")).await.unwrap();
    field.send_keys(token).await.unwrap();
    c.find(Locator::Css("#login-form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until("the apps to show", 30, || async {
        count(c, "#apps tbody tr").await == 2
    })
    .await;
}

/// Points of `version`'s request-rate line.
async fn chart_points(c: &Client, version: &str) -> usize {
    let css = format!("#chart-rps polyline[data-version='{version}']");
    match c.find(Locator::Css(&css)).await {
        Ok(e) => e
            .attr("data-points")
            .await
            .ok()
            .flatten()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0),
        Err(_) => 0,
    }
}

async fn click_action(c: &Client, action: &str) {
    let css = format!("#actions button[data-action='{action}']");
    c.wait()
        .for_element(Locator::Css(&css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[test]
fn the_dashboard_in_a_real_browser() {
    if !std::path::Path::new(CHROMEDRIVER).exists() {
        assert!(
            std::env::var_os("BATON_REQUIRE_CHROMIUM").is_none(),
            "chromedriver is missing (apt install chromium chromium-driver)"
        );
        eprintln!("skipped: chromium-driver not installed");
        return;
    }
    let h = Harness::new();
    let cart_listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let shop = h.write_spec_with(
        "shop",
        2,
        "  canary:\n    steps:\n      - set_weight: 50\n      - pause: { until: approved }\n      - set_weight: 100",
        "",
    );
    let cart = h.write_spec_on(
        "cart",
        cart_listen,
        1,
        "  canary:\n    steps:\n      - set_weight: 20\n      - pause: { duration: 10m }",
        "",
    );
    for (spec, app) in [(&shop, "shop"), (&cart, "cart")] {
        h.cli_ok(&["apply", "-f", path_str(spec)]);
        h.cli_ok(&["deploy", app, "v1", "--wait"]);
    }
    let viewer = h
        .cli_ok(&["token", "create", "watcher", "--role", "viewer"])
        .trim()
        .to_string();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Steady traffic on shop for the charts (bounded in count and time).
    let mut cfg = LoadConfig::new(h.listen);
    cfg.keepalive_workers = 1;
    cfg.fresh_workers = 0;
    cfg.max_requests = 200_000;
    cfg.max_duration = Duration::from_secs(240);
    cfg.pace = Duration::from_millis(5);
    let load = rt.block_on(async { loadgen::start(cfg) });

    let port = free_port();
    // The browser's profile and temporary files stay in the harness's dir,
    // removed with it.
    let browser_tmp = h.dir.join("chromium-tmp");
    std::fs::create_dir_all(&browser_tmp).unwrap();
    let _driver = Driver(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .env("TMPDIR", &browser_tmp)
            .env("HOME", &browser_tmp)
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    wait_until("chromedriver", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let admin = h.token();
    rt.block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1800",
                         format!("--user-data-dir={}", h.dir.join("chromium-profile").display())]
            }),
        );
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("connect to chromedriver");

        // A wrong token: refused, with the reason shown.
        c.goto(&format!("http://{}/ui/", h.api)).await.unwrap();
        let field = c.wait().for_element(Locator::Id("token")).await.unwrap();
        field.send_keys("baton_wrong").await.unwrap();
        c.find(Locator::Css("#login-form button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        until("the login error", 30, || async {
            text_of(&c, "#error").await.contains("log in failed")
        })
        .await;
        shot(&c, "1-login-refused").await;

        login(&c, h.api, &admin).await;
        shot(&c, "2-overview").await;

        // A canary waiting at its gate, its charts moving.
        h.cli_ok(&["deploy", "shop", "v2"]);
        c.find(Locator::Css("#apps tr[data-app='shop']"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        until("shop to wait for approval", 60, || async {
            text_of(&c, "#app-title")
                .await
                .contains("awaiting_approval")
        })
        .await;
        assert!(text_of(&c, "#waiting-list").await.contains("shop"));
        // The step timeline, the gate current.
        assert_eq!(
            text_of(&c, "#timeline li.current").await,
            "2. wait for approval"
        );
        assert_eq!(count(&c, "#timeline li").await, 3);
        until("v2's chart", 30, || async {
            chart_points(&c, "v2").await >= 3
        })
        .await;
        let before = chart_points(&c, "v2").await;
        until("the chart to move", 30, || async {
            chart_points(&c, "v2").await > before
        })
        .await;
        assert!(text_of(&c, "#legend").await.contains("v2:"));
        shot(&c, "3-canary-waiting").await;

        // Approve it from the page; the record shows who.
        click_action(&c, "approve").await;
        c.accept_alert().await.unwrap();
        until("shop to finish", 60, || async {
            text_of(&c, "#app-title").await.starts_with("shop — stable")
        })
        .await;
        until("the record", 30, || async {
            let row = text_of(&c, "#history tbody tr").await;
            row.contains("succeeded") && row.contains("tester")
        })
        .await;
        until("the audit row", 30, || async {
            text_of(&c, "#audit tbody").await.contains("approve")
        })
        .await;
        shot(&c, "4-approved-history").await;

        // Abort another canary; it rolls back.
        h.cli_ok(&["deploy", "cart", "v2"]);
        c.find(Locator::Css("#apps tr[data-app='cart']"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        until("cart's canary", 60, || async {
            text_of(&c, "#app-title").await.contains("progressing")
        })
        .await;
        click_action(&c, "abort").await;
        c.accept_alert().await.unwrap();
        until("cart rolled back", 60, || async {
            let row = text_of(&c, "#history tbody tr").await;
            text_of(&c, "#app-title").await.starts_with("cart — stable") && row.contains("aborted")
        })
        .await;
        shot(&c, "5-aborted").await;

        // A failed action says why.
        click_action(&c, "deploy").await;
        c.send_alert_text("not a version!").await.unwrap();
        c.accept_alert().await.unwrap();
        // The plan, shown for confirmation, then the deploy itself refused.
        until("the plan to confirm", 30, || async {
            c.get_alert_text()
                .await
                .is_ok_and(|t| t.contains("deploy cart not a version!"))
        })
        .await;
        c.accept_alert().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut shown = String::new();
        while Instant::now() < deadline && !shown.contains("failed") {
            shown = text_of(&c, "#error").await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            shown.starts_with("deploy cart not a version! failed: ") && shown.contains("version"),
            "{shown:?}"
        );
        shot(&c, "6-error").await;

        // A viewer sees no action, and the API refuses what a page could craft.
        c.find(Locator::Id("logout"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        login(&c, h.api, &viewer).await;
        c.find(Locator::Css("#apps tr[data-app='shop']"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        until("shop's view", 30, || async {
            text_of(&c, "#app-title").await.starts_with("shop")
        })
        .await;
        assert_eq!(count(&c, "#actions button").await, 0);
        let status = c
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 fetch('/v1/apps/shop/pause', {method: 'POST', headers: {
                     Authorization: 'Bearer ' + sessionStorage.getItem('baton-token'),
                     'Content-Type': 'application/json'}, body: '{}'})
                   .then(r => done(r.status));",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(status, json!(403));
        shot(&c, "7-viewer").await;
        c.close().await.unwrap();
    });
    let report = rt.block_on(load.finish());
    assert_no_failures(&report);
    assert_eq!(h.status("shop")["phase"], "stable");
}
