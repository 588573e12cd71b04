//! baton-store: the control plane's durable state in SQLite.
//!
//! The store holds only what must survive a restart: the latest applied spec of each
//! app, every revision (release) of an app, one opaque rollout-state document per app
//! fenced by a generation number, an append-only event log, and the upgrade history
//! (the audit record of who upgraded what, when, and how it ended).
//!
//! The API is synchronous and every call is short; callers that live in async code wrap
//! the [`Store`] in a mutex and call it from `spawn_blocking` (or directly).
//!
//! Durability: the database is opened in WAL mode with `synchronous=FULL`, so a committed
//! transition is on disk before the caller acts on it. The store has no clock of its own:
//! every timestamp (unix milliseconds) is supplied by the caller, which keeps tests
//! deterministic.
//!
//! The schema is embedded as an ordered list of migrations tracked with
//! `PRAGMA user_version`; a database written by a newer baton is refused rather than
//! guessed at.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

/// How long a statement waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The `result` of a history entry that has been started but not finished.
pub const HISTORY_IN_PROGRESS: &str = "in_progress";

/// Embedded schema migrations, applied in order. Migration `i` (0-based) brings the
/// database to `user_version = i + 1`. Never edit an entry once released: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    r#"
    CREATE TABLE apps (
        name        TEXT PRIMARY KEY NOT NULL,
        spec_json   TEXT NOT NULL,
        spec_yaml   TEXT NOT NULL,
        created_ms  INTEGER NOT NULL,
        updated_ms  INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE revisions (
        app         TEXT NOT NULL REFERENCES apps(name) ON DELETE RESTRICT,
        number      INTEGER NOT NULL CHECK (number >= 1),
        version     TEXT NOT NULL,
        env_json    TEXT NOT NULL,
        spec_json   TEXT NOT NULL,
        created_by  TEXT NOT NULL,
        created_ms  INTEGER NOT NULL,
        PRIMARY KEY (app, number)
    ) STRICT;

    -- Revisions are immutable so that any earlier one can be restored exactly.
    CREATE TRIGGER revisions_no_update BEFORE UPDATE ON revisions
    BEGIN SELECT RAISE(ABORT, 'revisions are immutable'); END;
    CREATE TRIGGER revisions_no_delete BEFORE DELETE ON revisions
    BEGIN SELECT RAISE(ABORT, 'revisions are immutable'); END;

    CREATE TABLE rollout_state (
        app         TEXT PRIMARY KEY NOT NULL REFERENCES apps(name) ON DELETE RESTRICT,
        generation  INTEGER NOT NULL CHECK (generation >= 1),
        state_json  TEXT NOT NULL,
        updated_ms  INTEGER NOT NULL
    ) STRICT;

    -- AUTOINCREMENT: event ids are never reused, so `after_id` cursors stay valid.
    CREATE TABLE events (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        app         TEXT NOT NULL,
        at_ms       INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        message     TEXT NOT NULL,
        fields_json TEXT NOT NULL
    ) STRICT;
    CREATE INDEX events_by_app ON events (app, id);

    CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
    CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;

    CREATE TABLE history (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        app          TEXT NOT NULL,
        revision     INTEGER NOT NULL,
        from_version TEXT,
        to_version   TEXT NOT NULL,
        environment  TEXT NOT NULL,
        operator     TEXT NOT NULL,
        strategy     TEXT NOT NULL,
        kind         TEXT NOT NULL,
        result       TEXT NOT NULL,
        notes        TEXT NOT NULL,
        started_ms   INTEGER NOT NULL,
        finished_ms  INTEGER
    ) STRICT;
    CREATE INDEX history_by_app ON history (app, started_ms, id);

    -- The audit record is never deleted; an entry may be finished once and then is frozen.
    CREATE TRIGGER history_no_delete BEFORE DELETE ON history
    BEGIN SELECT RAISE(ABORT, 'history is append-only'); END;
    CREATE TRIGGER history_finish_once BEFORE UPDATE ON history
    WHEN OLD.finished_ms IS NOT NULL
    BEGIN SELECT RAISE(ABORT, 'history entry already finished'); END;
    "#,
    // 2: the strategy a rollout runs under, when `deploy --strategy` replaced
    // the spec's for that one rollout (a restart must keep running it).
    r#"
    ALTER TABLE history ADD COLUMN strategy_json TEXT;
    "#,
    // 3: `baton delete`: an app with revisions is marked deleted (its revisions,
    // history and events stay); applying it again brings it back.
    r#"
    ALTER TABLE apps ADD COLUMN deleted_ms INTEGER;
    "#,
    // 4: the image a container revision runs, resolved to its digest when the
    // revision was made, so that a rollback runs exactly that image.
    r#"
    ALTER TABLE revisions ADD COLUMN image TEXT;
    ALTER TABLE revisions ADD COLUMN image_digest TEXT;
    "#,
    // 5: API tokens. Only a token's SHA-256 is kept; a name is never reused, so
    // the audit log's names stay unambiguous.
    r#"
    CREATE TABLE tokens (
        name        TEXT PRIMARY KEY NOT NULL,
        role        TEXT NOT NULL,
        apps_json   TEXT NOT NULL,
        hash        TEXT NOT NULL UNIQUE,
        created_by  TEXT NOT NULL,
        created_ms  INTEGER NOT NULL,
        revoked_ms  INTEGER
    ) STRICT;
    CREATE TRIGGER tokens_no_delete BEFORE DELETE ON tokens
    BEGIN SELECT RAISE(ABORT, 'tokens are revoked, not deleted'); END;
    "#,
    // 6: who passed a rollout's approval gates (token names, comma-separated).
    r#"
    ALTER TABLE history ADD COLUMN approvers TEXT NOT NULL DEFAULT '';
    "#,
];

/// Errors returned by the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or created.
    #[error("cannot open database {}: {source}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// The underlying SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer baton whose schema this binary does not know.
    #[error(
        "database schema version {found} is newer than this baton supports ({supported}); \
         upgrade baton or point it at another data dir"
    )]
    SchemaTooNew {
        /// `user_version` found in the database.
        found: i64,
        /// The newest schema version this binary knows.
        supported: i64,
    },
    /// Applying an embedded migration failed; the database stays at the previous version.
    #[error("applying schema migration {version} failed: {source}")]
    Migration {
        /// The schema version the migration would have produced.
        version: i64,
        /// The underlying SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The stored rollout-state generation is not the one the caller expected: another
    /// writer committed a transition first. Nothing was written.
    #[error("generation conflict: expected {expected}, found {found}")]
    GenerationConflict {
        /// The generation the caller based its transition on.
        expected: u64,
        /// The generation currently stored (0 = no state yet).
        found: u64,
    },
    /// The app has no applied spec (see [`Store::upsert_app`]).
    #[error("unknown app {app:?}: apply its spec first")]
    UnknownApp {
        /// The app name.
        app: String,
    },
    /// No upgrade-history entry has this id.
    #[error("no upgrade history entry with id {id}")]
    HistoryNotFound {
        /// The history id.
        id: i64,
    },
    /// The upgrade-history entry was already finished; its outcome cannot be rewritten.
    #[error("upgrade history entry {id} is already finished")]
    HistoryAlreadyFinished {
        /// The history id.
        id: i64,
    },
    /// The caller passed a value the store cannot record.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A value read from the database is out of range (the file was edited or damaged).
    #[error("corrupt database: {0}")]
    Corrupt(String),
    /// Any other SQLite error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// The latest applied spec of an app.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AppRecord {
    pub name: String,
    pub spec_json: String,
    pub spec_yaml: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// One release of an app. Numbered 1, 2, 3... per app and never modified.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RevisionRecord {
    pub app: String,
    pub number: u32,
    pub version: String,
    pub env_json: String,
    pub spec_json: String,
    pub created_by: String,
    pub created_ms: i64,
    /// The image a container revision runs, pinned to its digest.
    #[serde(default)]
    pub image: Option<ImagePin>,
}

/// An image reference as deployed, and the digest it resolved to then.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImagePin {
    pub reference: String,
    /// `sha256:...`
    pub digest: String,
}

/// An API token as stored: never the token itself, only its hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// The apps it may act on; empty: every app.
    pub apps: Vec<String>,
    /// SHA-256 of the token, hex.
    #[serde(skip_serializing)]
    pub hash: String,
    pub created_by: String,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
}

/// The rollout state of an app: an opaque JSON document fenced by a generation number.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StateRecord {
    pub generation: u64,
    pub state_json: String,
    pub updated_ms: i64,
}

/// An event to append to the log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NewEvent {
    pub kind: String,
    pub message: String,
    /// A JSON object with structured fields; `"{}"` if none.
    pub fields_json: String,
}

impl NewEvent {
    /// An event with no structured fields.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        NewEvent {
            kind: kind.into(),
            message: message.into(),
            fields_json: "{}".to_owned(),
        }
    }
}

/// An event as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventRecord {
    pub id: i64,
    pub app: String,
    pub at_ms: i64,
    pub kind: String,
    pub message: String,
    pub fields_json: String,
}

/// The start of an upgrade-history entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NewHistory {
    pub app: String,
    pub revision: u32,
    pub from_version: Option<String>,
    pub to_version: String,
    pub environment: String,
    pub operator: String,
    pub strategy: String,
    /// `"deploy"` or `"rollback"`.
    pub kind: String,
    /// The strategy spec (JSON) of a one-off `deploy --strategy`; `None` when
    /// the rollout runs the app spec's own strategy.
    #[serde(default)]
    pub strategy_json: Option<String>,
}

/// An upgrade-history entry (the audit record).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HistoryRecord {
    pub id: i64,
    pub app: String,
    pub revision: u32,
    pub from_version: Option<String>,
    pub to_version: String,
    pub environment: String,
    pub operator: String,
    pub strategy: String,
    pub kind: String,
    /// [`HISTORY_IN_PROGRESS`] until finished, then the caller's result (e.g. `"succeeded"`).
    pub result: String,
    pub notes: String,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    /// Who passed its approval gates, in order.
    #[serde(default)]
    pub approvers: Vec<String>,
}

/// The durable store. One SQLite connection.
pub struct Store {
    conn: Connection,
    /// Fault injection: asked before every write of the control plane's
    /// (see [`Store::set_write_faults`]). `None` in production.
    faults: Option<FaultHook>,
}

/// The writes the control plane makes while it runs, named for fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOp {
    CommitTransition,
    AppendEvent,
    CreateRevision,
    StartHistory,
    FinishHistory,
}

/// What an injected fault does to one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFault {
    /// The write fails before anything is written.
    Fail,
    /// The write lands, then the caller gets an error anyway (an I/O error
    /// after the commit reached the disk): the caller cannot tell whether it
    /// landed.
    FailAfterCommit,
}

/// Decides, for each write, whether it fails (see [`Store::set_write_faults`]).
pub type FaultHook = Box<dyn FnMut(WriteOp) -> Option<WriteFault> + Send>;

/// The error an injected fault returns: the disk I/O error SQLite reports.
fn injected(op: WriteOp) -> StoreError {
    StoreError::Sqlite(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
        Some(format!("injected fault: {op:?} failed")),
    ))
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.conn.path())
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database file at `path` and brings its schema up to
    /// date. The parent directory must exist.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        Self::init(conn)
    }

    /// Opens a private in-memory database (for tests and dry runs).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: PathBuf::from(":memory:"),
            source,
        })?;
        Self::init(conn)
    }

    fn init(mut conn: Connection) -> Result<Store, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // WAL lets readers proceed during a write; FULL makes each commit durable before
        // it returns, which is what "persist the transition before acting on it" needs.
        // (An in-memory database answers "memory" here; that is fine.)
        let _mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(Store { conn, faults: None })
    }

    /// Fault injection for the deterministic simulation: `hook` is asked
    /// before each write of [`WriteOp`] and may make it fail (before or after
    /// it lands). Production never sets one.
    pub fn set_write_faults(&mut self, hook: Option<FaultHook>) {
        self.faults = hook;
    }

    /// The fault injected into this write, if any; a [`WriteFault::Fail`] is
    /// returned as the error at once.
    fn fault(&mut self, op: WriteOp) -> Result<Option<WriteFault>, StoreError> {
        match self.faults.as_mut().and_then(|hook| hook(op)) {
            Some(WriteFault::Fail) => Err(injected(op)),
            other => Ok(other),
        }
    }

    /// Runs one write of `op` with its injected fault, if any.
    fn faulty<T>(
        &mut self,
        op: WriteOp,
        write: impl FnOnce(&mut Self) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let fault = self.fault(op)?;
        let value = write(self)?;
        if fault == Some(WriteFault::FailAfterCommit) {
            return Err(injected(op));
        }
        Ok(value)
    }

    /// The schema version of the open database (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// The newest schema version this binary knows.
    pub fn supported_schema_version() -> i64 {
        MIGRATIONS.len() as i64
    }

    // ---- apps -------------------------------------------------------------------------

    /// Records `spec_*` as the latest applied spec of `name`, creating the app if new.
    /// `created_ms` is kept from the first apply.
    pub fn upsert_app(
        &mut self,
        name: &str,
        spec_json: &str,
        spec_yaml: &str,
        now_ms: i64,
    ) -> Result<AppRecord, StoreError> {
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO apps (name, spec_json, spec_yaml, created_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (name) DO UPDATE SET
                 spec_json = excluded.spec_json,
                 spec_yaml = excluded.spec_yaml,
                 updated_ms = excluded.updated_ms,
                 deleted_ms = NULL",
            params![name, spec_json, spec_yaml, now_ms],
        )?;
        let rec = get_app(&tx, name)?.ok_or_else(|| {
            StoreError::Corrupt(format!("app {name:?} missing right after upsert"))
        })?;
        tx.commit()?;
        Ok(rec)
    }

    /// The latest applied spec of `name`, if any.
    pub fn get_app(&self, name: &str) -> Result<Option<AppRecord>, StoreError> {
        get_app(&self.conn, name)
    }

    /// Every app (not deleted), ordered by name.
    pub fn list_apps(&self) -> Result<Vec<AppRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT name, spec_json, spec_yaml, created_ms, updated_ms FROM apps
             WHERE deleted_ms IS NULL ORDER BY name",
        )?;
        let rows = stmt.query_map([], app_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes `app`: its rollout state goes; an app with revisions is only marked
    /// deleted, so its revisions, history and events stay (the audit record is never
    /// lost) and applying it again continues its revision numbers. An app without
    /// revisions (registered, never deployed) is removed entirely. Unknown apps: no-op.
    pub fn delete_app(&mut self, app: &str, now_ms: i64) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        tx.execute("DELETE FROM rollout_state WHERE app = ?1", [app])?;
        let revisions: i64 = tx.query_row(
            "SELECT COUNT(*) FROM revisions WHERE app = ?1",
            [app],
            |r| r.get(0),
        )?;
        if revisions == 0 {
            tx.execute("DELETE FROM apps WHERE name = ?1", [app])?;
        } else {
            tx.execute(
                "UPDATE apps SET deleted_ms = ?2 WHERE name = ?1",
                params![app, now_ms],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    // ---- revisions --------------------------------------------------------------------

    /// Records a new release of `app` with the next revision number (1 for the first).
    /// The app must exist.
    pub fn create_revision(
        &mut self,
        app: &str,
        version: &str,
        env_json: &str,
        spec_json: &str,
        created_by: &str,
        now_ms: i64,
    ) -> Result<RevisionRecord, StoreError> {
        self.create_revision_pinned(app, version, env_json, spec_json, created_by, now_ms, None)
    }

    /// [`Store::create_revision`] for a release that runs `image`, pinned to its digest.
    #[allow(clippy::too_many_arguments)]
    pub fn create_revision_pinned(
        &mut self,
        app: &str,
        version: &str,
        env_json: &str,
        spec_json: &str,
        created_by: &str,
        now_ms: i64,
        image: Option<&ImagePin>,
    ) -> Result<RevisionRecord, StoreError> {
        self.faulty(WriteOp::CreateRevision, |s| {
            let tx = s.write_tx()?;
            require_app(&tx, app)?;
            let last: i64 = tx.query_row(
                "SELECT COALESCE(MAX(number), 0) FROM revisions WHERE app = ?1",
                [app],
                |r| r.get(0),
            )?;
            let number = u32::try_from(last)
                .ok()
                .and_then(|n| n.checked_add(1))
                .ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "revision number {last} of app {app:?} out of range"
                    ))
                })?;
            tx.execute(
                "INSERT INTO revisions (app, number, version, env_json, spec_json, created_by,
                                        created_ms, image, image_digest)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    app,
                    number,
                    version,
                    env_json,
                    spec_json,
                    created_by,
                    now_ms,
                    image.map(|i| &i.reference),
                    image.map(|i| &i.digest)
                ],
            )?;
            tx.commit()?;
            Ok(RevisionRecord {
                app: app.to_owned(),
                number,
                version: version.to_owned(),
                env_json: env_json.to_owned(),
                spec_json: spec_json.to_owned(),
                created_by: created_by.to_owned(),
                created_ms: now_ms,
                image: image.cloned(),
            })
        })
    }

    /// Revision `number` of `app`, if it exists.
    pub fn get_revision(
        &self,
        app: &str,
        number: u32,
    ) -> Result<Option<RevisionRecord>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT app, number, version, env_json, spec_json, created_by, created_ms,
                        image, image_digest
                 FROM revisions WHERE app = ?1 AND number = ?2",
                params![app, number],
                revision_from_row,
            )
            .optional()?)
    }

    /// Every revision of `app`, oldest (1) first.
    pub fn list_revisions(&self, app: &str) -> Result<Vec<RevisionRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT app, number, version, env_json, spec_json, created_by, created_ms,
                    image, image_digest
             FROM revisions WHERE app = ?1 ORDER BY number",
        )?;
        let rows = stmt.query_map([app], revision_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- rollout state ----------------------------------------------------------------

    /// The rollout state of `app`, or `None` if no transition was ever committed.
    pub fn load_state(&self, app: &str) -> Result<Option<StateRecord>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT generation, state_json, updated_ms FROM rollout_state WHERE app = ?1",
                [app],
                |r| {
                    Ok(StateRecord {
                        generation: r.get(0)?,
                        state_json: r.get(1)?,
                        updated_ms: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// Atomically (one transaction): check the stored generation equals
    /// `expected_generation` (0 = no row yet), write the new state with generation + 1 and
    /// append `events`. Returns the new generation.
    ///
    /// A mismatch is [`StoreError::GenerationConflict`] and writes nothing. The app must
    /// exist.
    pub fn commit_transition(
        &mut self,
        app: &str,
        expected_generation: u64,
        state_json: &str,
        events: &[NewEvent],
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        self.faulty(WriteOp::CommitTransition, |s| {
            let tx = s.write_tx()?;
            let found: u64 = tx
                .query_row(
                    "SELECT generation FROM rollout_state WHERE app = ?1",
                    [app],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            if found != expected_generation {
                // Dropping the transaction rolls it back; nothing was written anyway.
                return Err(StoreError::GenerationConflict {
                    expected: expected_generation,
                    found,
                });
            }
            require_app(&tx, app)?;
            let next = expected_generation
                .checked_add(1)
                .and_then(|g| i64::try_from(g).ok())
                .ok_or_else(|| {
                    StoreError::InvalidInput(format!(
                        "generation {expected_generation} is too large"
                    ))
                })?;
            tx.execute(
                "INSERT INTO rollout_state (app, generation, state_json, updated_ms)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (app) DO UPDATE SET
                     generation = excluded.generation,
                     state_json = excluded.state_json,
                     updated_ms = excluded.updated_ms",
                params![app, next, state_json, now_ms],
            )?;
            for event in events {
                insert_event(&tx, app, event, now_ms)?;
            }
            tx.commit()?;
            // `next` came from a u64 + 1 that fit in i64, so it is positive.
            Ok(next as u64)
        })
    }

    // ---- events -----------------------------------------------------------------------

    /// Appends one event to the log of `app`.
    pub fn append_event(
        &mut self,
        app: &str,
        event: &NewEvent,
        now_ms: i64,
    ) -> Result<EventRecord, StoreError> {
        self.faulty(WriteOp::AppendEvent, |s| {
            let id = insert_event(&s.conn, app, event, now_ms)?;
            Ok(EventRecord {
                id,
                app: app.to_owned(),
                at_ms: now_ms,
                kind: event.kind.clone(),
                message: event.message.clone(),
                fields_json: event.fields_json.clone(),
            })
        })
    }

    /// Up to `limit` events of `app` with id greater than `after_id`, ascending by id.
    /// Pass `after_id = 0` to read from the beginning, then the last id seen to page on.
    pub fn list_events(
        &self,
        app: &str,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, app, at_ms, kind, message, fields_json FROM events
             WHERE app = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![app, after_id, limit], event_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest event of `app` whose kind is `kind`, if any.
    pub fn last_event_of_kind(
        &self,
        app: &str,
        kind: &str,
    ) -> Result<Option<EventRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, app, at_ms, kind, message, fields_json FROM events
             WHERE app = ?1 AND kind = ?2 ORDER BY id DESC LIMIT 1",
        )?;
        let mut rows = stmt.query_map(params![app, kind], event_row)?;
        Ok(rows.next().transpose()?)
    }

    // ---- upgrade history --------------------------------------------------------------

    /// Opens an upgrade-history entry with result [`HISTORY_IN_PROGRESS`]. Returns its id.
    pub fn start_history(&mut self, entry: &NewHistory, now_ms: i64) -> Result<i64, StoreError> {
        self.faulty(WriteOp::StartHistory, |s| {
            s.conn.execute(
                "INSERT INTO history (app, revision, from_version, to_version, environment,
                                      operator, strategy, kind, result, notes, started_ms, finished_ms,
                                      strategy_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, '', ?10, NULL, ?11)",
                params![
                    entry.app,
                    entry.revision,
                    entry.from_version,
                    entry.to_version,
                    entry.environment,
                    entry.operator,
                    entry.strategy,
                    entry.kind,
                    HISTORY_IN_PROGRESS,
                    now_ms,
                    entry.strategy_json,
                ],
            )?;
            Ok(s.conn.last_insert_rowid())
        })
    }

    /// The one-off strategy (JSON) rollout `history_id` runs under, if it does
    /// not run its app spec's own.
    pub fn rollout_strategy(&self, history_id: i64) -> Result<Option<String>, StoreError> {
        let found: Option<Option<String>> = self
            .conn
            .query_row(
                "SELECT strategy_json FROM history WHERE id = ?1",
                [history_id],
                |r| r.get(0),
            )
            .optional()?;
        match found {
            None => Err(StoreError::HistoryNotFound { id: history_id }),
            Some(s) => Ok(s),
        }
    }

    /// Records how upgrade `id` ended. An entry can be finished only once.
    pub fn finish_history(
        &mut self,
        id: i64,
        result: &str,
        notes: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.faulty(WriteOp::FinishHistory, |s| {
            if result == HISTORY_IN_PROGRESS || result.is_empty() {
                return Err(StoreError::InvalidInput(format!(
                    "{result:?} is not a final upgrade result"
                )));
            }
            let tx = s.write_tx()?;
            let finished: Option<Option<i64>> = tx
                .query_row("SELECT finished_ms FROM history WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()?;
            match finished {
                None => return Err(StoreError::HistoryNotFound { id }),
                Some(Some(_)) => return Err(StoreError::HistoryAlreadyFinished { id }),
                Some(None) => {}
            }
            tx.execute(
                "UPDATE history SET result = ?2, notes = ?3, finished_ms = ?4 WHERE id = ?1",
                params![id, result, notes, now_ms],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Adds `who` to the approvers of rollout `history_id` (while it runs).
    pub fn add_history_approver(&mut self, history_id: i64, who: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE history SET approvers = CASE WHEN approvers = '' THEN ?2
                                            ELSE approvers || ',' || ?2 END
             WHERE id = ?1 AND finished_ms IS NULL",
            params![history_id, who.replace(',', " ")],
        )?;
        Ok(())
    }

    /// The upgrade history of `app`, newest first.
    pub fn list_history(&self, app: &str) -> Result<Vec<HistoryRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, app, revision, from_version, to_version, environment, operator,
                    strategy, kind, result, notes, started_ms, finished_ms, approvers
             FROM history WHERE app = ?1 ORDER BY started_ms DESC, id DESC",
        )?;
        let rows = stmt.query_map([app], |r| {
            Ok(HistoryRecord {
                id: r.get(0)?,
                app: r.get(1)?,
                revision: r.get(2)?,
                from_version: r.get(3)?,
                to_version: r.get(4)?,
                environment: r.get(5)?,
                operator: r.get(6)?,
                strategy: r.get(7)?,
                kind: r.get(8)?,
                result: r.get(9)?,
                notes: r.get(10)?,
                started_ms: r.get(11)?,
                finished_ms: r.get(12)?,
                approvers: r
                    .get::<_, String>(13)?
                    .split(',')
                    .filter(|a| !a.is_empty())
                    .map(str::to_owned)
                    .collect(),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Adds a token. A name in use (even by a revoked token) is refused.
    pub fn create_token(&mut self, t: &TokenRecord) -> Result<(), StoreError> {
        let apps = serde_json::to_string(&t.apps).unwrap_or_else(|_| "[]".into());
        self.conn.execute(
            "INSERT INTO tokens (name, role, apps_json, hash, created_by, created_ms, revoked_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)",
            params![t.name, t.role, apps, t.hash, t.created_by, t.created_ms],
        )?;
        Ok(())
    }

    /// Every token, oldest first, revoked ones too.
    pub fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT name, role, apps_json, hash, created_by, created_ms, revoked_ms
             FROM tokens ORDER BY created_ms, name",
        )?;
        let rows = stmt.query_map([], token_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The live (not revoked) token whose hash is `hash`.
    pub fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT name, role, apps_json, hash, created_by, created_ms, revoked_ms
                 FROM tokens WHERE hash = ?1 AND revoked_ms IS NULL",
                [hash],
                token_row,
            )
            .optional()?)
    }

    /// Revokes token `name`; false when there is no live token of that name.
    pub fn revoke_token(&mut self, name: &str, now_ms: i64) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "UPDATE tokens SET revoked_ms = ?2 WHERE name = ?1 AND revoked_ms IS NULL",
            params![name, now_ms],
        )?;
        Ok(n == 1)
    }

    /// A write transaction that takes the write lock up front, so a read-then-write
    /// sequence (generation check, next revision number) cannot interleave with another
    /// connection's write.
    fn write_tx(&mut self) -> Result<Transaction<'_>, StoreError> {
        Ok(self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?)
    }
}

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    let apps: String = r.get(2)?;
    Ok(TokenRecord {
        name: r.get(0)?,
        role: r.get(1)?,
        apps: serde_json::from_str(&apps).unwrap_or_default(),
        hash: r.get(3)?,
        created_by: r.get(4)?,
        created_ms: r.get(5)?,
        revoked_ms: r.get(6)?,
    })
}

/// Brings the schema to the newest version, one migration per transaction.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let supported = MIGRATIONS.len() as i64;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Read inside the write transaction: another process may have migrated meanwhile.
        let current: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if current > supported {
            return Err(StoreError::SchemaTooNew {
                found: current,
                supported,
            });
        }
        if current < 0 {
            return Err(StoreError::Corrupt(format!(
                "negative schema version {current}"
            )));
        }
        if current == supported {
            return Ok(());
        }
        let version = current + 1;
        let sql = MIGRATIONS[current as usize];
        let apply = |tx: &Transaction<'_>| -> rusqlite::Result<()> {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", version)?;
            Ok(())
        };
        apply(&tx).map_err(|source| StoreError::Migration { version, source })?;
        tx.commit()
            .map_err(|source| StoreError::Migration { version, source })?;
    }
}

fn get_app(conn: &Connection, name: &str) -> Result<Option<AppRecord>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT name, spec_json, spec_yaml, created_ms, updated_ms FROM apps
             WHERE name = ?1 AND deleted_ms IS NULL",
            [name],
            app_from_row,
        )
        .optional()?)
}

fn require_app(conn: &Connection, app: &str) -> Result<(), StoreError> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM apps WHERE name = ?1)",
        [app],
        |r| r.get(0),
    )?;
    if exists {
        Ok(())
    } else {
        Err(StoreError::UnknownApp {
            app: app.to_owned(),
        })
    }
}

/// An [`EventRecord`] from a row of `SELECT id, app, at_ms, kind, message, fields_json`.
fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRecord> {
    Ok(EventRecord {
        id: r.get(0)?,
        app: r.get(1)?,
        at_ms: r.get(2)?,
        kind: r.get(3)?,
        message: r.get(4)?,
        fields_json: r.get(5)?,
    })
}

fn insert_event(
    conn: &Connection,
    app: &str,
    event: &NewEvent,
    now_ms: i64,
) -> Result<i64, StoreError> {
    conn.execute(
        "INSERT INTO events (app, at_ms, kind, message, fields_json) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![app, now_ms, event.kind, event.message, event.fields_json],
    )?;
    Ok(conn.last_insert_rowid())
}

fn app_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AppRecord> {
    Ok(AppRecord {
        name: r.get(0)?,
        spec_json: r.get(1)?,
        spec_yaml: r.get(2)?,
        created_ms: r.get(3)?,
        updated_ms: r.get(4)?,
    })
}

fn revision_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RevisionRecord> {
    Ok(RevisionRecord {
        app: r.get(0)?,
        number: r.get(1)?,
        version: r.get(2)?,
        env_json: r.get(3)?,
        spec_json: r.get(4)?,
        created_by: r.get(5)?,
        created_ms: r.get(6)?,
        image: match (
            r.get::<_, Option<String>>(7)?,
            r.get::<_, Option<String>>(8)?,
        ) {
            (Some(reference), Some(digest)) => Some(ImagePin { reference, digest }),
            _ => None,
        },
    })
}

#[cfg(test)]
mod tests;
