//! Container apps: from the spec's `driver.container` to what the container driver
//! needs (image reference, API endpoint, pull policy), and the one image a release
//! pins across the hosts of a fleet.

use baton_spec::{ContainerDriverSpec, TemplateVars};

/// The image reference of `version`, from the spec's template.
pub fn image_of(spec: &ContainerDriverSpec, app: &str, version: &str) -> String {
    let vars = TemplateVars {
        version,
        port: 0,
        app,
        instance: "",
        baton: "",
    };
    baton_spec::render_template(&spec.image, &vars)
}

/// The engine's API endpoint: the spec's, else `DOCKER_HOST`, else the usual sockets.
pub fn endpoint_of(spec: &ContainerDriverSpec) -> Result<String, baton_driver::DriverError> {
    baton_driver::resolve_endpoint(spec.endpoint.as_deref())
}

/// The endpoint a fleet host's node gets: the spec's as written, empty when the
/// spec names none. The node resolves it on its host (see `crate::node`): this
/// machine's `DOCKER_HOST` or sockets say nothing about another machine's.
pub fn endpoint_on_host(spec: &ContainerDriverSpec) -> String {
    spec.endpoint
        .as_deref()
        .map(str::trim)
        .unwrap_or_default()
        .to_owned()
}

pub fn pull_policy(policy: baton_spec::PullPolicy) -> baton_driver::PullPolicy {
    match policy {
        baton_spec::PullPolicy::Never => baton_driver::PullPolicy::Never,
        baton_spec::PullPolicy::IfMissing => baton_driver::PullPolicy::IfMissing,
        baton_spec::PullPolicy::Always => baton_driver::PullPolicy::Always,
    }
}

/// `registry/app@sha256:...`: the image `digest` of `reference`'s repository, as a
/// rollback must run it whatever the reference's tag names now.
pub fn pinned_reference(reference: &str, digest: &str) -> String {
    let without_digest = reference.split('@').next().unwrap_or(reference);
    // A ':' after the last '/' starts the tag (a ':' before it is a registry port).
    let repository = match without_digest.rfind(':') {
        Some(i) if !without_digest[i..].contains('/') => &without_digest[..i],
        _ => without_digest,
    };
    format!("{repository}@{digest}")
}

/// Why an image cannot run on this machine, if it cannot: another OS, or another
/// CPU architecture (the engine reports Go's names: amd64, arm64...).
pub fn platform_mismatch(info: &baton_driver::ImageInfo) -> Option<String> {
    platform_mismatch_on(info, std::env::consts::ARCH)
}

/// Why an image cannot run on a machine of architecture `arch` (as Rust names
/// it: `x86_64`, `aarch64`), if it cannot.
pub fn platform_mismatch_on(info: &baton_driver::ImageInfo, arch: &str) -> Option<String> {
    let here = match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    if !info.os.is_empty() && info.os != "linux" {
        return Some(format!(
            "is built for {}, not linux; build or pull a linux/{here} image",
            info.os
        ));
    }
    if !info.architecture.is_empty() && info.architecture != here {
        return Some(format!(
            "is built for {}, not {here}; build or pull a linux/{here} image",
            info.architecture
        ));
    }
    None
}

/// Whether `want` (a hex sha256, with or without `sha256:`) names the image.
pub fn digest_matches(info: &baton_driver::ImageInfo, want: &str) -> bool {
    let want = want
        .trim()
        .trim_start_matches("sha256:")
        .to_ascii_lowercase();
    [&info.digest, &info.id]
        .iter()
        .any(|d| d.trim_start_matches("sha256:") == want)
}

/// The one image a release of a fleet app pins, from what each host's engine
/// resolved its reference to (`resolved`, in the spec's host order; an error
/// names its host): the digest most hosts have, the first host's on a tie.
/// Every host must have that image: a host that could not resolve it, or has
/// another image under the reference, is a problem naming the host, the image
/// and both digests. Hosts whose images have the same id but different repo
/// digests (one image, loaded or pulled differently) agree; the release then
/// pins the id, which every host can find.
pub fn one_image_on_hosts(
    reference: &str,
    resolved: &[(String, Result<baton_driver::ImageInfo, String>)],
) -> Result<baton_driver::ImageInfo, Vec<String>> {
    let mut problems: Vec<String> = resolved
        .iter()
        .filter_map(|(_, r)| r.as_ref().err().cloned())
        .collect();
    let found: Vec<(&str, &baton_driver::ImageInfo)> = resolved
        .iter()
        .filter_map(|(host, r)| Some((host.as_str(), r.as_ref().ok()?)))
        .collect();
    let count = |digest: &str| found.iter().filter(|(_, i)| i.digest == digest).count();
    // The first of the most common (max_by_key would take the last).
    let Some(&(_, chosen)) = found.iter().fold(
        None,
        |best: Option<&(&str, &baton_driver::ImageInfo)>, f| match best {
            Some(b) if count(&b.1.digest) >= count(&f.1.digest) => Some(b),
            _ => Some(f),
        },
    ) else {
        if problems.is_empty() {
            problems.push(format!("no host to resolve {reference} on"));
        }
        return Err(problems);
    };
    let with_chosen: Vec<&str> = found
        .iter()
        .filter(|(_, i)| i.digest == chosen.digest)
        .map(|(h, _)| *h)
        .collect();
    let mut by_id = false;
    for (host, info) in &found {
        if info.digest == chosen.digest {
            continue;
        }
        if info.id == chosen.id {
            by_id = true;
            continue;
        }
        problems.push(format!(
            "host {host}: {reference} is {} there, but {} on {}: every host must have the \
             same image (pull it from one registry on each host, or copy it there with \
             `podman save` and `podman load`)",
            info.digest,
            chosen.digest,
            with_chosen.join(", ")
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut pinned = chosen.clone();
    if by_id {
        pinned.digest = chosen.id.clone();
    }
    Ok(pinned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(os: &str, arch: &str) -> baton_driver::ImageInfo {
        baton_driver::ImageInfo {
            digest: "sha256:aa".into(),
            id: "sha256:bb".into(),
            os: os.into(),
            architecture: arch.into(),
            size_bytes: 1,
        }
    }

    fn image(digest: &str, id: &str) -> baton_driver::ImageInfo {
        baton_driver::ImageInfo {
            digest: digest.into(),
            id: id.into(),
            ..info("linux", "amd64")
        }
    }

    fn on(
        host: &str,
        info: baton_driver::ImageInfo,
    ) -> (String, Result<baton_driver::ImageInfo, String>) {
        (host.into(), Ok(info))
    }

    #[test]
    fn a_fleet_release_pins_the_image_every_host_has() {
        let same = [
            on("h0", image("sha256:aa", "sha256:11")),
            on("h1", image("sha256:aa", "sha256:11")),
        ];
        assert_eq!(
            one_image_on_hosts("app:v2", &same).unwrap().digest,
            "sha256:aa"
        );
        // One image under two repo digests: the id, which both can find.
        let by_id = [
            on("h0", image("sha256:aa", "sha256:11")),
            on("h1", image("sha256:bb", "sha256:11")),
        ];
        assert_eq!(
            one_image_on_hosts("app:v2", &by_id).unwrap().digest,
            "sha256:11"
        );
    }

    #[test]
    fn a_host_with_another_image_is_named_with_both_digests() {
        let odd = [
            on("h0", image("sha256:aa", "sha256:11")),
            on("h1", image("sha256:bb", "sha256:22")),
            on("h2", image("sha256:bb", "sha256:22")),
        ];
        // The majority's digest is the one; the odd host is named.
        let problems = one_image_on_hosts("app:v2", &odd).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        for needle in [
            "host h0",
            "app:v2",
            "sha256:aa there",
            "sha256:bb on h1, h2",
        ] {
            assert!(problems[0].contains(needle), "{needle}: {problems:?}");
        }
        // A tie: the first host's in the spec's order.
        let tie = &odd[..2];
        let problems = one_image_on_hosts("app:v2", tie).unwrap_err();
        assert!(
            problems[0].starts_with("host h1: app:v2 is sha256:bb there, but sha256:aa on h0"),
            "{problems:?}"
        );
        // A host that could not resolve it fails the release too.
        let missing = [
            on("h0", image("sha256:aa", "sha256:11")),
            (
                "h1".to_owned(),
                Err("host h1: image app:v2: does not exist".to_owned()),
            ),
        ];
        assert_eq!(
            one_image_on_hosts("app:v2", &missing).unwrap_err(),
            ["host h1: image app:v2: does not exist"]
        );
        assert!(one_image_on_hosts("app:v2", &[]).is_err());
    }

    #[test]
    fn the_endpoint_a_host_gets_is_the_spec_s_or_empty() {
        let mut spec: ContainerDriverSpec = serde_json::from_value(serde_json::json!({
            "image": "app:{version}", "endpoint": null, "pull": "never", "port": 8080,
            "network": "publish", "entrypoint": null, "command": null, "env": {},
            "user": null, "workdir": null, "memory_bytes": null, "cpus": null,
            "read_only": false, "labels": {}, "stop_grace": "5s"
        }))
        .unwrap();
        assert_eq!(endpoint_on_host(&spec), "");
        spec.endpoint = Some("unix:///run/x.sock".into());
        assert_eq!(endpoint_on_host(&spec), "unix:///run/x.sock");
    }

    #[test]
    fn pinned_references_keep_the_repository_and_drop_the_tag() {
        assert_eq!(
            pinned_reference("localhost/app:v1", "sha256:ab"),
            "localhost/app@sha256:ab"
        );
        assert_eq!(
            pinned_reference("reg:5000/app", "sha256:ab"),
            "reg:5000/app@sha256:ab"
        );
        assert_eq!(
            pinned_reference("reg:5000/app:v2", "sha256:ab"),
            "reg:5000/app@sha256:ab"
        );
        assert_eq!(
            pinned_reference("app@sha256:00", "sha256:ab"),
            "app@sha256:ab"
        );
    }

    #[test]
    fn platform_and_digest_checks() {
        let here = if cfg!(target_arch = "aarch64") {
            "arm64"
        } else {
            "amd64"
        };
        assert_eq!(platform_mismatch(&info("linux", here)), None);
        assert!(
            platform_mismatch(&info("windows", here))
                .unwrap()
                .contains("not linux")
        );
        let other = if here == "amd64" { "arm64" } else { "amd64" };
        assert!(
            platform_mismatch(&info("linux", other))
                .unwrap()
                .contains(other)
        );
        // A host's own architecture, not this machine's.
        assert_eq!(
            platform_mismatch_on(&info("linux", "arm64"), "aarch64"),
            None
        );
        assert!(platform_mismatch_on(&info("linux", "amd64"), "aarch64").is_some());
        assert!(digest_matches(&info("linux", here), "sha256:aa"));
        assert!(digest_matches(&info("linux", here), "BB"));
        assert!(!digest_matches(&info("linux", here), "cc"));
    }
}
