//! The audit log: who did what, from where, and what baton decided on its own,
//! in a file of JSON lines where each record carries the hash of the one before
//! (`DATA_DIR/audit.jsonl`). Every so often a checkpoint record signs the chain's
//! head with a key kept in the data dir (`audit.key`, mode 0600), so a rewritten
//! chain is caught too. `baton audit verify` finds an edited, deleted, inserted
//! or reordered record and says which; `baton audit export` prints the records.
//!
//! Fail closed: a change is made only once its record is on disk; when it cannot
//! be written, the request is refused and nothing changes.

use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// Records between two checkpoints.
const CHECKPOINT_EVERY: u64 = 100;
/// The hash before the first record.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit record as written (without `hash`, which covers the rest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// 1, 2, 3... with no gap.
    pub seq: u64,
    pub at_ms: i64,
    /// A token's name, or `baton` for what baton decided itself.
    pub actor: String,
    /// Where the request came from (`127.0.0.1:51234`), or `controller`.
    pub source: String,
    /// `deploy`, `abort`, `analysis_failed`, `checkpoint`...
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// `requested`, `refused`, `done`, `failed`, `decided`, `signed`.
    pub outcome: String,
    /// Why, or what: the refusal's reason, the answer's status, a verdict.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// The hash of the previous record.
    pub prev: String,
    /// Checkpoints: HMAC-SHA256 of `prev` with the data dir's audit key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// A record with its hash, as one line of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    #[serde(flatten)]
    pub record: Record,
    /// SHA-256 of `prev` and the record's JSON without `hash`.
    pub hash: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash of `record` (its `prev` included).
pub fn hash_of(record: &Record) -> String {
    let json = serde_json::to_string(record).unwrap_or_default();
    hex(&sha2::Sha256::digest(json.as_bytes()))
}

fn sign(key: &[u8], head: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(head.as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// What to record, before the chain's fields are filled in.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub actor: String,
    pub source: String,
    pub action: String,
    pub app: Option<String>,
    pub outcome: String,
    pub detail: String,
}

/// The audit log of a data dir.
pub struct AuditLog {
    path: PathBuf,
    key: Vec<u8>,
    /// The last record's seq and hash.
    head: Mutex<(u64, String)>,
}

impl AuditLog {
    /// Opens (or starts) the log of `data_dir`: reads the key (made on first use)
    /// and the last record. A log that does not verify is still opened (new
    /// records chain on from its last line); `baton audit verify` reports it.
    pub fn open(data_dir: &Path) -> anyhow::Result<AuditLog> {
        let path = data_dir.join("audit.jsonl");
        let key = load_or_make_key(&data_dir.join("audit.key"))?;
        let mut head = (0, GENESIS.to_string());
        if let Ok(f) = std::fs::File::open(&path) {
            for line in std::io::BufReader::new(f).lines() {
                let line = line.with_context(|| format!("reading {}", path.display()))?;
                if let Ok(l) = serde_json::from_str::<Line>(&line) {
                    head = (l.record.seq, l.hash);
                }
            }
        }
        Ok(AuditLog {
            path,
            key,
            head: Mutex::new(head),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `entry` and makes sure it is on disk; the error says why it is not
    /// (then the caller must not act). A checkpoint follows every
    /// [`CHECKPOINT_EVERY`] records.
    pub fn append(&self, entry: Entry, now_ms: i64) -> anyhow::Result<u64> {
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        let record = Record {
            seq: head.0 + 1,
            at_ms: now_ms,
            actor: entry.actor,
            source: entry.source,
            action: entry.action,
            app: entry.app,
            outcome: entry.outcome,
            detail: entry.detail,
            prev: head.1.clone(),
            signature: None,
        };
        let mut lines = vec![Line {
            hash: hash_of(&record),
            record,
        }];
        let seq = lines[0].record.seq;
        if seq % CHECKPOINT_EVERY == 0 {
            let prev = lines[0].hash.clone();
            let checkpoint = Record {
                seq: seq + 1,
                at_ms: now_ms,
                actor: "baton".into(),
                source: "audit".into(),
                action: "checkpoint".into(),
                app: None,
                outcome: "signed".into(),
                detail: String::new(),
                signature: Some(sign(&self.key, &prev)),
                prev,
            };
            lines.push(Line {
                hash: hash_of(&checkpoint),
                record: checkpoint,
            });
        }
        let mut text = String::new();
        for l in &lines {
            text.push_str(&serde_json::to_string(l)?);
            text.push('\n');
        }
        // Opened for every record, so a file made read-only (or removed) since
        // is noticed at once.
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&self.path)?;
            f.write_all(text.as_bytes())?;
            f.sync_data()
        };
        write()
            .with_context(|| format!("cannot write the audit record to {}", self.path.display()))?;
        let last = lines.last().expect("one line at least");
        *head = (last.record.seq, last.hash.clone());
        Ok(seq)
    }
}

fn load_or_make_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(k) if k.len() >= 32 => return Ok(k),
        Ok(_) => anyhow::bail!(
            "{} is shorter than 32 bytes: the audit key is damaged; restore it from a backup",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut key = vec![0u8; 32];
    getrandom::fill(&mut key).map_err(std::io::Error::other)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(&key)?;
    f.sync_all()?;
    Ok(key)
}

/// What `verify` found wrong, first problem first; empty: the log is intact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// 1-based line of the file.
    pub line: usize,
    pub message: String,
}

/// The result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    pub records: usize,
    pub checkpoints: usize,
    pub problems: Vec<Problem>,
}

/// Checks the chain of the log at `path`: every line parses, seqs follow one
/// another, each record names the previous one's hash and its own hash matches
/// its content, and every checkpoint's signature is the data dir's key's.
pub fn verify(path: &Path, key_path: &Path) -> anyhow::Result<Verified> {
    let key = std::fs::read(key_path).with_context(|| format!("reading {}", key_path.display()))?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Verified {
        records: 0,
        checkpoints: 0,
        problems: Vec::new(),
    };
    let mut expect_seq = 1u64;
    let mut prev_hash = GENESIS.to_string();
    for (i, text) in text.lines().enumerate() {
        let line = i + 1;
        let mut problem = |message: String| out.problems.push(Problem { line, message });
        let l: Line = match serde_json::from_str(text) {
            Ok(l) => l,
            Err(e) => {
                problem(format!("not an audit record ({e})"));
                continue;
            }
        };
        let r = &l.record;
        if hash_of(r) != l.hash {
            problem(format!(
                "record {} was edited: its content does not match its hash",
                r.seq
            ));
        }
        if r.seq != expect_seq {
            let message = if r.seq > expect_seq {
                format!(
                    "record {} follows record {}: {} record(s) deleted before it",
                    r.seq,
                    expect_seq - 1,
                    r.seq - expect_seq
                )
            } else {
                format!(
                    "record {} comes after record {}: records were reordered or inserted",
                    r.seq,
                    expect_seq - 1
                )
            };
            problem(message);
        } else if r.prev != prev_hash {
            problem(format!(
                "record {} does not follow the record before it (its `prev` is another hash): \
                 a record was replaced or inserted",
                r.seq
            ));
        }
        if let Some(sig) = &r.signature {
            out.checkpoints += 1;
            if *sig != sign(&key, &r.prev) {
                problem(format!(
                    "checkpoint {} is not signed by this data dir's audit key: the chain before \
                     it was rewritten",
                    r.seq
                ));
            }
        }
        out.records += 1;
        expect_seq = r.seq + 1;
        prev_hash = l.hash;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> Entry {
        Entry {
            actor: "ana".into(),
            source: "127.0.0.1:5000".into(),
            action: "deploy".into(),
            app: Some("web".into()),
            outcome: "requested".into(),
            detail: format!("v{n}"),
        }
    }

    fn log_with(n: u64) -> (tempdir::Dir, AuditLog) {
        let dir = tempdir::Dir::new();
        let log = AuditLog::open(&dir.0).unwrap();
        for i in 0..n {
            log.append(entry(i), i as i64).unwrap();
        }
        (dir, log)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!(
                    "baton-audit-{}-{}",
                    std::process::id(),
                    fastrand::u64(..)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn check(dir: &tempdir::Dir) -> Verified {
        verify(&dir.0.join("audit.jsonl"), &dir.0.join("audit.key")).unwrap()
    }

    fn rewrite(dir: &tempdir::Dir, f: impl FnOnce(&mut Vec<String>)) {
        let path = dir.0.join("audit.jsonl");
        let mut lines: Vec<String> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        f(&mut lines);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    }

    #[test]
    fn an_intact_log_verifies_and_reopens_where_it_ended() {
        let (dir, log) = log_with(150);
        let v = check(&dir);
        assert_eq!((v.records, v.checkpoints), (151, 1), "{v:?}");
        assert!(v.problems.is_empty(), "{v:?}");
        drop(log);
        let log = AuditLog::open(&dir.0).unwrap();
        assert_eq!(log.append(entry(999), 1).unwrap(), 152);
        assert!(check(&dir).problems.is_empty());
    }

    #[test]
    fn edits_deletions_insertions_and_reordering_are_named() {
        let (dir, _log) = log_with(10);
        rewrite(&dir, |l| {
            *l = l.iter().map(|x| x.replace("\"v3\"", "\"v9\"")).collect()
        });
        assert_eq!(
            check(&dir).problems[0].message,
            "record 4 was edited: its content does not match its hash"
        );

        let (dir, _log) = log_with(10);
        rewrite(&dir, |l| {
            l.remove(4);
        });
        assert_eq!(
            check(&dir).problems,
            vec![Problem {
                line: 5,
                message: "record 6 follows record 4: 1 record(s) deleted before it".into()
            }]
        );

        let (dir, _log) = log_with(10);
        rewrite(&dir, |l| l.swap(2, 3));
        let p = check(&dir).problems;
        assert_eq!(p[0].line, 3);
        assert!(p[0].message.contains("record 4 follows record 2"), "{p:?}");
        assert!(p[1].message.contains("reordered"), "{p:?}");

        // An inserted record with a valid hash of its own does not chain.
        let (dir, _log) = log_with(10);
        rewrite(&dir, |l| {
            let mut forged: Line = serde_json::from_str(&l[5]).unwrap();
            forged.record.detail = "forged".into();
            forged.hash = hash_of(&forged.record);
            l[5] = serde_json::to_string(&forged).unwrap();
        });
        let p = check(&dir).problems;
        assert!(p[0].message.contains("record 7 does not follow"), "{p:?}");
    }

    #[test]
    fn a_rewritten_chain_fails_its_checkpoint() {
        let (dir, _log) = log_with(120);
        // Rewrite record 1 and every hash after it, consistently.
        rewrite(&dir, |lines| {
            let mut prev = GENESIS.to_string();
            for (i, text) in lines.iter_mut().enumerate() {
                let mut l: Line = serde_json::from_str(text).unwrap();
                if i == 0 {
                    l.record.actor = "mallory".into();
                }
                l.record.prev = prev.clone();
                l.hash = hash_of(&l.record);
                prev = l.hash.clone();
                *text = serde_json::to_string(&l).unwrap();
            }
        });
        let p = check(&dir).problems;
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].message.contains("checkpoint 101 is not signed"),
            "{p:?}"
        );
    }
}
