//! Smoke tests and warm-up: real requests (and user commands) against the new
//! release before users reach it. Output is kept short enough for the event
//! log, which is where an operator reads why a rollout stopped.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;

/// An HTTP smoke test.
#[derive(Debug, Clone)]
pub struct HttpCheck {
    pub name: String,
    pub method: String,
    pub path: String,
    pub expect_status: u16,
    pub expect_body: Option<String>,
    pub count: u32,
    pub concurrency: u32,
    pub timeout: Duration,
}

/// Send `check.count` requests to `base` (e.g. `http://127.0.0.1:8081`), at most
/// `check.concurrency` at once. Ok with a summary, or Err naming the first failure.
pub async fn run_http(base: &str, check: &HttpCheck) -> Result<String, String> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let method = Method::from_bytes(check.method.as_bytes())
        .map_err(|_| format!("{}: bad method {}", check.name, check.method))?;
    let url = format!("{base}{}", check.path);
    let started = Instant::now();
    let mut sent = 0u32;
    let mut ok = 0u32;
    let mut tasks = JoinSet::new();
    while ok < check.count {
        while sent < check.count && tasks.len() < check.concurrency.max(1) as usize {
            sent += 1;
            let (client, method, url, check) =
                (client.clone(), method.clone(), url.clone(), check.clone());
            tasks.spawn(async move { one(&client, method, &url, &check).await });
        }
        match tasks.join_next().await {
            Some(Ok(Ok(()))) => ok += 1,
            Some(Ok(Err(e))) => return Err(format!("{}: {e}", check.name)),
            Some(Err(e)) => return Err(format!("{}: {e}", check.name)),
            None => break,
        }
    }
    Ok(format!(
        "{}: {ok} × {} {} answered {} in {} ms",
        check.name,
        check.method,
        check.path,
        check.expect_status,
        started.elapsed().as_millis()
    ))
}

async fn one(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    method: Method,
    url: &str,
    check: &HttpCheck,
) -> Result<(), String> {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(check.timeout, client.request(req))
        .await
        .map_err(|_| format!("no answer within {} ms", check.timeout.as_millis()))?
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(check.timeout, resp.into_body().collect())
        .await
        .map_err(|_| "body timed out".to_string())?
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    if status != check.expect_status {
        return Err(format!(
            "HTTP {status}, expected {}: {}",
            check.expect_status,
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    if let Some(want) = &check.expect_body
        && !String::from_utf8_lossy(&body).contains(want.as_str())
    {
        return Err(format!("body does not contain {want:?}"));
    }
    Ok(())
}

/// Run a user command (argv already rendered); Ok with the output's tail when it
/// exits 0 within `timeout`.
pub async fn run_command(name: &str, argv: &[String], timeout: Duration) -> Result<String, String> {
    let Some((program, args)) = argv.split_first() else {
        return Err(format!("{name}: empty command"));
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(timeout, child)
        .await
        .map_err(|_| {
            format!(
                "{name}: still running after {} s, stopped",
                timeout.as_secs()
            )
        })?
        .map_err(|e| format!("{name}: cannot run {program}: {e}"))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let tail: String = {
        let t = text.trim();
        let start = t.len().saturating_sub(400);
        let start = (start..=t.len())
            .find(|i| t.is_char_boundary(*i))
            .unwrap_or(t.len());
        t[start..].to_string()
    };
    if out.status.success() {
        Ok(format!(
            "{name}: passed{}",
            if tail.is_empty() {
                String::new()
            } else {
                format!(" ({tail})")
            }
        ))
    } else {
        Err(format!("{name}: exited with {}: {tail}", out.status))
    }
}

/// Warm an instance up: `requests` GETs of `path`, `concurrency` at a time.
/// Failures are tolerated (a cold instance may be slow); only the count matters.
pub async fn warm_up(addr: SocketAddr, path: &str, requests: u32, concurrency: u32) -> u32 {
    let check = HttpCheck {
        name: "warm-up".into(),
        method: "GET".into(),
        path: path.to_string(),
        expect_status: 200,
        expect_body: None,
        count: requests,
        concurrency,
        timeout: Duration::from_secs(10),
    };
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("http://{addr}{path}");
    let mut tasks = JoinSet::new();
    let mut done = 0;
    let mut sent = 0;
    while done < requests {
        while sent < requests && tasks.len() < concurrency.max(1) as usize {
            sent += 1;
            let (client, url, check) = (client.clone(), url.clone(), check.clone());
            tasks.spawn(async move { one(&client, Method::GET, &url, &check).await });
        }
        if tasks.join_next().await.is_none() {
            break;
        }
        done += 1;
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commands_pass_on_exit_zero_and_fail_with_output() {
        let ok = run_command(
            "t",
            &["sh".into(), "-c".into(), "echo fine".into()],
            Duration::from_secs(5),
        )
        .await;
        assert!(ok.unwrap().contains("fine"));
        let err = run_command(
            "scan",
            &["sh".into(), "-c".into(), "echo CVE-1; exit 1".into()],
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(err.contains("scan") && err.contains("CVE-1"), "{err}");
        let missing = run_command("x", &["/no/such/tool".into()], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(missing.contains("cannot run"), "{missing}");
    }
}
