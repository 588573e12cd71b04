//! baton installs itself on a host: its own binary, copied over the SSH
//! connection to a path named by version and checksum, checked after the copy.
//! Nothing is ever downloaded, and a binary already there with the right
//! checksum is not copied again.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use openssh::Session;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::ssh::run;

/// Hex SHA-256 of a file.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Shell-quote one word.
pub fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Make `dir` on the host (relative to the user's home) and return its
/// absolute path (forwarded sockets need one).
pub async fn prepare_dir(session: &Session, dir: &str) -> anyhow::Result<String> {
    let q = quote(dir);
    let out = run(
        session,
        &format!("cd && mkdir -p {q}/bin {q}/logs && cd {q} && pwd -P"),
    )
    .await?;
    Ok(out.trim().to_owned())
}

/// Install `local` (this baton binary, of checksum `sha`) under `dir/bin` on
/// the host; returns the remote path.
pub async fn install(
    session: &Session,
    dir: &str,
    local: &Path,
    sha: &str,
) -> anyhow::Result<String> {
    let name = format!("baton-{}-{}", env!("CARGO_PKG_VERSION"), &sha[..12]);
    let path = format!("{dir}/bin/{name}");
    let q = quote(&path);
    let present = run(
        session,
        &format!("sha256sum {q} 2>/dev/null | cut -d' ' -f1"),
    )
    .await
    .unwrap_or_default();
    if present.trim() == sha {
        return Ok(path);
    }
    let tmp = format!("{path}.part");
    let qt = quote(&tmp);
    let mut child = session
        .command("sh")
        .arg("-c")
        .arg(format!("cat > {qt}"))
        .stdin(openssh::Stdio::piped())
        .stdout(openssh::Stdio::null())
        .stderr(openssh::Stdio::piped())
        .spawn()
        .await
        .context("starting the copy")?;
    let mut stdin = child.stdin().take().context("no stdin for the copy")?;
    let mut file = tokio::fs::File::open(local)
        .await
        .with_context(|| format!("opening {}", local.display()))?;
    tokio::io::copy(&mut file, &mut stdin)
        .await
        .context("copying baton to the host")?;
    stdin.shutdown().await.ok();
    drop(stdin);
    let status = child.wait().await.context("waiting for the copy")?;
    if !status.success() {
        anyhow::bail!("copying baton to {tmp} failed ({status})");
    }
    let copied = run(session, &format!("sha256sum {qt} | cut -d' ' -f1")).await?;
    if copied.trim() != sha {
        let _ = run(session, &format!("rm -f {qt}")).await;
        anyhow::bail!(
            "the copy of baton at {tmp} has checksum {} instead of {sha}; removed",
            copied.trim()
        );
    }
    run(session, &format!("chmod 755 {qt} && mv -f {qt} {q}")).await?;
    Ok(path)
}
