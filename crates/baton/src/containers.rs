//! Container apps: from the spec's `driver.container` to what the container driver
//! needs (image reference, API endpoint, pull policy).

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
    let here = match std::env::consts::ARCH {
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
        assert!(digest_matches(&info("linux", here), "sha256:aa"));
        assert!(digest_matches(&info("linux", here), "BB"));
        assert!(!digest_matches(&info("linux", here), "cc"));
    }
}
