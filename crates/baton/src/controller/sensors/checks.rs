//! Smoke tests: at a `Checks` step the new release's tests run once against
//! it (its preview listener, or one of its instances directly), and their
//! outcome comes back as `ChecksPassed` or `ChecksFailed`.

use std::net::SocketAddr;

use baton_engine::{AppState, Input};
use baton_spec::{AppSpec, StrategySpec, TemplateVars};

use crate::effects::Reporter;

/// Which rollout step's smoke tests are running or done.
#[derive(Default)]
pub struct SmokeChecks {
    /// History id and step of the rollout whose smoke tests are running or done.
    started_for: Option<(i64, usize)>,
}

impl SmokeChecks {
    /// At a `Checks` step, run the smoke tests once against the new release.
    /// `spec` is the spec the rollout runs under.
    pub fn start_if_due(
        &mut self,
        spec: &AppSpec,
        state: &AppState,
        baton_exe: &str,
        report: &Reporter,
    ) {
        let Some(r) = &state.rollout else { return };
        let at_checks = r.phase == baton_engine::RolloutPhase::Progressing
            && r.step_started_ms.is_some()
            && matches!(
                r.current_step(&state.params),
                Some(baton_engine::Step::Checks)
            );
        let key = (r.history_id, r.step);
        if !at_checks || self.started_for == Some(key) {
            return;
        }
        let preview = match &spec.strategy {
            StrategySpec::BlueGreen(b) => b.preview_listen,
            _ => None,
        };
        let base = preview
            .or_else(|| {
                state
                    .instances
                    .iter()
                    .filter(|i| i.revision == r.to.revision && i.is_routable())
                    .find_map(|i| i.address.as_deref()?.parse().ok())
            })
            .map(|a: SocketAddr| format!("http://{a}"));
        let Some(base) = base else { return };
        self.started_for = Some(key);
        let smoke = spec.hooks.smoke.clone();
        let (version, app, baton) = (
            r.to.version.clone(),
            spec.name.clone(),
            baton_exe.to_string(),
        );
        let tx = report.clone();
        tokio::spawn(async move {
            let mut passed = Vec::new();
            for test in &smoke {
                let result = match test {
                    baton_spec::SmokeTest::Http {
                        name,
                        method,
                        path,
                        expect_status,
                        expect_body,
                        count,
                        concurrency,
                        timeout,
                    } => {
                        let check = crate::hooks::HttpCheck {
                            name: name.clone(),
                            method: method.clone(),
                            path: path.clone(),
                            expect_status: *expect_status,
                            expect_body: expect_body.clone(),
                            count: *count,
                            concurrency: *concurrency,
                            timeout: *timeout,
                        };
                        crate::hooks::run_http(&base, &check).await
                    }
                    baton_spec::SmokeTest::Command {
                        name,
                        command,
                        timeout,
                    } => {
                        let argv: Vec<String> = command
                            .iter()
                            .map(|a| {
                                baton_spec::render_template_with(
                                    a,
                                    &TemplateVars {
                                        version: &version,
                                        port: 0,
                                        app: &app,
                                        instance: "smoke",
                                        baton: &baton,
                                    },
                                    &[("preview_url", base.as_str())],
                                )
                            })
                            .collect();
                        crate::hooks::run_command(name, &argv, *timeout).await
                    }
                };
                match result {
                    Ok(summary) => passed.push(summary),
                    Err(reason) => {
                        let _ = tx.send(Input::ChecksFailed { reason });
                        return;
                    }
                }
            }
            let _ = tx.send(Input::ChecksPassed {
                summary: passed.join("; "),
            });
        });
    }
}
