//! The operator's requests for a release: `deploy`, `rollback` and `retry`,
//! and the pre-flight checks a deploy passes before anything changes.

use baton_engine::{EngineError, Input, Outcome, Release, RolloutKind};
use baton_spec::TemplateVars;
use baton_store::NewHistory;

use super::AppController;
use crate::preflight::CheckResult;

/// The image check of a container release, and the pin it resolved to.
pub(super) struct ImageCheck {
    result: CheckResult,
    pin: Option<baton_store::ImagePin>,
}
use crate::controller::handle::{CommandError, DeployAccepted, DeployRequest};
use crate::controller::params::params_of;

impl AppController {
    pub(super) async fn deploy(
        &mut self,
        request: DeployRequest,
    ) -> Result<DeployAccepted, CommandError> {
        let DeployRequest {
            version,
            env,
            operator,
            kind,
            revision,
            now,
            strategy,
            sha256,
            image,
        } = request;
        if let Some(r) = self.state.rollout.clone()
            && now
            && r.not_before_ms.is_some()
            && r.to.version == version
            && revision.is_none_or(|n| n == r.to.revision)
        {
            // `deploy --now` of the release waiting for its window: start it.
            self.apply(Input::Deploy {
                to: r.to.clone(),
                kind: r.kind,
                operator,
                history_id: r.history_id,
                not_before_ms: None,
            })
            .await?;
            return Ok(DeployAccepted {
                revision: r.to.revision,
                history_id: r.history_id,
                version,
                unchanged: false,
                waits_for_window: None,
            });
        }
        if let Some(r) = &self.state.rollout {
            return Err(EngineError::RolloutInProgress {
                app: self.spec.name.clone(),
                version: r.to.version.clone(),
            }
            .into());
        }
        let app = self.spec.name.clone();
        if let Some(image) = &image {
            if !matches!(self.spec.driver, baton_spec::DriverSpec::Container(_)) {
                return Err(CommandError::BadRequest(format!(
                    "--image {image}: {app} runs as a {}, not as a container; leave --image out",
                    self.spec.driver.kind()
                )));
            }
            if revision.is_some() || image.trim().is_empty() || image.contains(char::is_whitespace)
            {
                return Err(CommandError::BadRequest(format!(
                    "--image {image:?} is not an image reference; give one such as registry.example.com/shop:v2"
                )));
            }
        }
        let internal = |e: baton_store::StoreError| CommandError::Internal(e.to_string());
        // A container release runs one exact image: resolved now (pulled under the
        // pull policy), pinned to its digest with the revision.
        let pinned = match revision {
            Some(n) => self
                .shared
                .store()
                .get_revision(&app, n)
                .map_err(internal)?
                .and_then(|r| r.image),
            None => None,
        };
        let image_check = self
            .resolve_release_image(
                &version,
                image.as_deref(),
                pinned.as_ref(),
                sha256.as_deref(),
            )
            .await;
        self.preflight(&version, sha256.as_deref(), image_check.as_ref())
            .await?;
        let pin = image_check.and_then(|c| c.pin);
        let env_json =
            serde_json::to_string(&env).map_err(|e| CommandError::Internal(e.to_string()))?;
        let rev = {
            let mut store = self.shared.store();
            match revision {
                Some(n) => store
                    .get_revision(&app, n)
                    .map_err(internal)?
                    .ok_or_else(|| {
                        CommandError::BadRequest(format!(
                            "{app} has no revision {n}; `baton history {app}` lists them"
                        ))
                    })?,
                None => {
                    // Same version and env as the stable revision: nothing to do.
                    if let Some(stable) = &self.state.stable
                        && let Some(cur) = store
                            .get_revision(&app, stable.revision)
                            .map_err(internal)?
                        && cur.version == version
                        && cur.env_json == env_json
                        && cur.image.as_ref().map(|p| &p.digest) == pin.as_ref().map(|p| &p.digest)
                    {
                        return Ok(DeployAccepted {
                            revision: cur.number,
                            history_id: 0,
                            version,
                            unchanged: true,
                            waits_for_window: None,
                        });
                    }
                    let spec_json = serde_json::to_string(&self.spec)
                        .map_err(|e| CommandError::Internal(e.to_string()))?;
                    store
                        .create_revision_pinned(
                            &app,
                            &version,
                            &env_json,
                            &spec_json,
                            &operator,
                            self.shared.now_ms(),
                            pin.as_ref(),
                        )
                        .map_err(internal)?
                }
            }
        };
        // A one-off strategy is recorded with the rollout, so that a restarted
        // control plane runs (and shows) the same one.
        let one_off = strategy
            .map(|kind| self.spec.strategy_of_kind(kind))
            .filter(|s| *s != self.spec.strategy);
        let strategy_json = one_off
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| CommandError::Internal(e.to_string()))?;
        let history_id = self
            .shared
            .store()
            .start_history(
                &NewHistory {
                    app: app.clone(),
                    revision: rev.number,
                    from_version: self.state.stable.as_ref().map(|s| s.version.clone()),
                    to_version: rev.version.clone(),
                    environment: self.spec.environment.clone(),
                    operator: operator.clone(),
                    strategy: one_off
                        .as_ref()
                        .unwrap_or(&self.spec.strategy)
                        .kind()
                        .to_string(),
                    kind: kind.as_str().into(),
                    strategy_json,
                },
                self.shared.now_ms(),
            )
            .map_err(internal)?;
        if let Some(strategy) = one_off {
            let mut spec = self.spec.clone();
            spec.strategy = strategy.clone();
            self.strategy_override = Some(strategy);
            self.apply(Input::UpdateParams {
                params: params_of(&spec),
            })
            .await?;
        }
        let not_before_ms = if now {
            None
        } else {
            crate::windows::next_start_ms(&self.spec, self.shared.now_ms())
        };
        let waits_for_window = not_before_ms
            .zip(self.spec.upgrade_windows.as_ref())
            .map(|(start, w)| crate::windows::describe_wait(w, start, self.shared.now_ms()));
        let input = Input::Deploy {
            to: Release {
                revision: rev.number,
                version: rev.version.clone(),
            },
            kind,
            operator,
            history_id,
            not_before_ms: if now {
                None
            } else {
                crate::windows::next_start_ms(&self.spec, self.shared.now_ms())
            },
        };
        if let Err(e) = self.apply(input).await {
            let _ = self.shared.store().finish_history(
                history_id,
                "refused",
                &e.to_string(),
                self.shared.now_ms(),
            );
            return Err(e);
        }
        Ok(DeployAccepted {
            revision: rev.number,
            history_id,
            version: rev.version,
            unchanged: false,
            waits_for_window,
        })
    }

    /// `baton rollback` (see [`Command::Rollback`]).
    pub(super) async fn rollback(
        &mut self,
        to_revision: Option<u32>,
        operator: String,
    ) -> Result<DeployAccepted, CommandError> {
        let app = self.spec.name.clone();
        if let Some(r) = &self.state.rollout {
            // During a rollout (a blue-green scale-down delay included) a
            // rollback is an abort: traffic returns to the stable release at once.
            let Some(from) = r.from.clone() else {
                return Err(CommandError::BadRequest(format!(
                    "{app}'s first release is still rolling out; there is nothing to roll back to"
                )));
            };
            let history_id = r.history_id;
            self.apply(Input::Abort {
                by: operator,
                reason: "rollback requested".into(),
            })
            .await?;
            return Ok(DeployAccepted {
                revision: from.revision,
                history_id,
                version: from.version,
                unchanged: false,
                waits_for_window: None,
            });
        }
        let internal = |e: baton_store::StoreError| CommandError::Internal(e.to_string());
        let current = self.state.stable.as_ref().map(|r| r.revision);
        let target = match to_revision {
            Some(n) => n,
            None => {
                // The release that was stable before the current one: walk the
                // successful releases newest first, past the current one.
                let history = self.shared.store().list_history(&app).map_err(internal)?;
                let mut seen_current = false;
                let mut previous = None;
                for h in history.iter().filter(|h| h.result == "succeeded") {
                    if !seen_current {
                        seen_current = Some(h.revision) == current;
                    } else if Some(h.revision) != current {
                        previous = Some(h.revision);
                        break;
                    }
                }
                previous.ok_or_else(|| {
                    CommandError::BadRequest(format!(
                        "{app} has no earlier successful release to roll back to; use --to-revision N (see `baton history {app}`)"
                    ))
                })?
            }
        };
        let rev = self
            .shared
            .store()
            .get_revision(&app, target)
            .map_err(internal)?
            .ok_or_else(|| {
                CommandError::BadRequest(format!(
                    "{app} has no revision {target}; `baton history {app}` lists them"
                ))
            })?;
        if current == Some(target) {
            return Err(CommandError::BadRequest(format!(
                "{app} already runs revision {target} ({})",
                rev.version
            )));
        }
        self.deploy(DeployRequest {
            revision: Some(target),
            now: true,
            ..DeployRequest::new(rev.version, operator, RolloutKind::Rollback)
        })
        .await
    }

    /// `baton retry` (see [`Command::Retry`]).
    pub(super) async fn retry(&mut self, operator: String) -> Result<DeployAccepted, CommandError> {
        let app = self.spec.name.clone();
        let last = self
            .state
            .last_finished
            .clone()
            .filter(|f| f.outcome != Outcome::Succeeded)
            .ok_or_else(|| {
                CommandError::BadRequest(format!(
                    "{app}'s last rollout did not fail or abort; there is nothing to retry"
                ))
            })?;
        let record = self
            .shared
            .store()
            .list_history(&app)
            .map_err(|e| CommandError::Internal(e.to_string()))?
            .into_iter()
            .find(|h| h.id == last.history_id)
            .ok_or_else(|| {
                CommandError::Internal(format!("history record {} is missing", last.history_id))
            })?;
        self.deploy(DeployRequest {
            revision: Some(record.revision),
            ..DeployRequest::new(record.to_version, operator, RolloutKind::Deploy)
        })
        .await
    }

    /// For a container app: the release's image, resolved on the engine (pulled
    /// under the pull policy) — `pinned` when the release has one already (a
    /// rollback runs exactly that image) — with the pre-flight check it makes.
    /// An app on hosts resolves it on every host's engine, and pins the one
    /// image they all have (see [`crate::containers::one_image_on_hosts`]).
    /// `None` for other apps.
    async fn resolve_release_image(
        &self,
        version: &str,
        image: Option<&str>,
        pinned: Option<&baton_store::ImagePin>,
        sha256: Option<&str>,
    ) -> Option<ImageCheck> {
        let baton_spec::DriverSpec::Container(c) = &self.spec.driver else {
            return None;
        };
        let fail = |detail: String| {
            Some(ImageCheck {
                result: CheckResult {
                    check: crate::preflight::Check::Image,
                    ok: false,
                    detail,
                },
                pin: None,
            })
        };
        let pull = crate::containers::pull_policy(c.pull);
        let (reference, lookup) = match pinned {
            // The pinned image itself, whatever its tag names now.
            Some(pin) => (
                pin.reference.clone(),
                crate::containers::pinned_reference(&pin.reference, &pin.digest),
            ),
            None => {
                let reference = image.map_or_else(
                    || crate::containers::image_of(c, &self.spec.name, version),
                    str::to_owned,
                );
                (reference.clone(), reference)
            }
        };
        // The image as one machine has it, checked for that machine's platform
        // and against the vetted digest.
        let usable = |info: baton_driver::ImageInfo, arch: Option<&str>| {
            if let Some(problem) =
                arch.and_then(|arch| crate::containers::platform_mismatch_on(&info, arch))
            {
                return Err(format!("{reference} ({}) {problem}", info.digest));
            }
            if let Some(want) = sha256
                && !crate::containers::digest_matches(&info, want)
            {
                return Err(format!(
                    "{reference} is {}, not the vetted sha256:{}",
                    info.digest,
                    want.trim_start_matches("sha256:")
                ));
            }
            Ok(info)
        };
        let (info, on) = match &self.spec.hosts {
            None => {
                let endpoint = match crate::containers::endpoint_of(c) {
                    Ok(e) => e,
                    Err(e) => return fail(e.to_string()),
                };
                let resolved = self
                    .shared
                    .driver
                    .resolve_image(None, &endpoint, &lookup, pull)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|info| usable(info, Some(std::env::consts::ARCH)));
                match resolved {
                    Ok(info) => (info, String::new()),
                    Err(e) => return fail(e),
                }
            }
            Some(hosts) => {
                let endpoint = crate::containers::endpoint_on_host(c);
                let resolved = futures_util::future::join_all(hosts.hosts.iter().map(|h| {
                    let (endpoint, lookup) = (&endpoint, &lookup);
                    async move {
                        let got = self
                            .shared
                            .driver
                            .resolve_image(Some(&h.name), endpoint, lookup, pull)
                            .await;
                        (h.name.clone(), got)
                    }
                }))
                .await;
                let checked: Vec<_> = resolved
                    .into_iter()
                    .map(|(host, got)| {
                        // The host's own architecture, as its node reports it.
                        let arch = self
                            .shared
                            .fleet
                            .host(&host)
                            .and_then(|l| l.state().node)
                            .map(|n| n.arch)
                            .filter(|a| !a.is_empty());
                        let got = got.map_err(|e| e.to_string()).and_then(|info| {
                            usable(info, arch.as_deref()).map_err(|e| format!("host {host}: {e}"))
                        });
                        (host, got)
                    })
                    .collect();
                match crate::containers::one_image_on_hosts(&reference, &checked) {
                    Ok(info) => (info, format!(" on all {} hosts", hosts.hosts.len())),
                    Err(problems) => return fail(problems.join("; ")),
                }
            }
        };
        Some(ImageCheck {
            result: CheckResult {
                check: crate::preflight::Check::Image,
                ok: true,
                detail: format!(
                    "{reference} is {}{on} ({}/{}, {})",
                    info.digest,
                    info.os,
                    info.architecture,
                    baton_driver::format_bytes(info.size_bytes)
                ),
            },
            pin: Some(baton_store::ImagePin {
                reference,
                digest: info.digest,
            }),
        })
    }

    /// Checks that must pass before a rollout starts; a failure changes nothing.
    async fn preflight(
        &self,
        version: &str,
        sha256: Option<&str>,
        image: Option<&ImageCheck>,
    ) -> Result<(), CommandError> {
        let mut instance_memory = Vec::new();
        for handle in self
            .state
            .instances
            .iter()
            .filter_map(|i| self.handle_of(&i.id))
        {
            if let Some(sample) = self.shared.driver.sample(&handle).await {
                instance_memory.push(sample.memory_limit_bytes.unwrap_or(sample.memory_bytes));
            }
        }
        let plan = baton_engine::plan(
            &self.state,
            Release {
                revision: u32::MAX,
                version: version.to_string(),
            },
        )?;
        let extra = plan
            .peak_instances
            .saturating_sub(self.state.instances.len() as u32);
        let serves = self
            .shared
            .router
            .listening(&self.spec.name, self.spec.listen)
            .await;
        let results = crate::preflight::run(&crate::preflight::Preflight {
            spec: &self.spec,
            version,
            baton_exe: &self.shared.baton_exe,
            data_dir: &self.shared.data_dir,
            extra_instances: extra,
            instance_memory: &instance_memory,
            sha256,
            router_serves_app: serves,
            image: image.map(|i| i.result.clone()),
        });
        let mut failed: Vec<String> = results
            .iter()
            .filter(|r| !r.ok)
            .map(|r| format!("{}: {}", r.check, r.detail))
            .collect();
        // The user's own checks (a vulnerability scanner, a dependency check...).
        for check in &self.spec.preflight {
            let vars = TemplateVars {
                version,
                port: 0,
                app: &self.spec.name,
                instance: "preflight",
                baton: &self.shared.baton_exe,
            };
            let pin = image.and_then(|i| i.pin.as_ref());
            let extra = [
                ("image", pin.map_or("", |p| p.reference.as_str())),
                ("digest", pin.map_or("", |p| p.digest.as_str())),
            ];
            let argv: Vec<String> = check
                .command
                .iter()
                .map(|a| baton_spec::render_template_with(a, &vars, &extra))
                .collect();
            if let Err(e) = crate::hooks::run_command(&check.name, &argv, check.timeout).await {
                failed.push(e);
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(CommandError::Preflight(format!(
                "pre-flight checks failed, nothing was changed:\n  {}",
                failed.join("\n  ")
            )))
        }
    }
}
