//! Unit tests for the store, on real files in the temp dir.

use super::*;
use std::sync::atomic::{AtomicU32, Ordering};

/// A database file path unique to this process and call; removed (with WAL files) on drop.
struct TempDb {
    path: PathBuf,
}

impl TempDb {
    fn new() -> TempDb {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "baton-store-test-{}-{}.sqlite",
            std::process::id(),
            n
        ));
        let db = TempDb { path };
        db.cleanup();
        db
    }

    fn cleanup(&self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn store_with_app(app: &str) -> (TempDb, Store) {
    let db = TempDb::new();
    let mut store = Store::open(&db.path).unwrap();
    store.upsert_app(app, "{}", "name: x\n", 1).unwrap();
    (db, store)
}

#[test]
fn migrations_are_idempotent_across_reopen() {
    let db = TempDb::new();
    {
        let mut store = Store::open(&db.path).unwrap();
        assert_eq!(
            store.schema_version().unwrap(),
            Store::supported_schema_version()
        );
        store.upsert_app("web", "{\"a\":1}", "a: 1\n", 10).unwrap();
    }
    for _ in 0..3 {
        let store = Store::open(&db.path).unwrap();
        assert_eq!(
            store.schema_version().unwrap(),
            Store::supported_schema_version()
        );
        let app = store.get_app("web").unwrap().unwrap();
        assert_eq!(app.spec_json, "{\"a\":1}");
    }
}

#[test]
fn opens_with_wal_and_full_sync() {
    let db = TempDb::new();
    let store = Store::open(&db.path).unwrap();
    let mode: String = store
        .conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let sync: i64 = store
        .conn
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 2, "synchronous=FULL");
    let fk: i64 = store
        .conn
        .pragma_query_value(None, "foreign_keys", |r| r.get(0))
        .unwrap();
    assert_eq!(fk, 1);
}

#[test]
fn database_newer_than_binary_is_refused() {
    let db = TempDb::new();
    {
        let store = Store::open(&db.path).unwrap();
        store
            .conn
            .pragma_update(None, "user_version", Store::supported_schema_version() + 1)
            .unwrap();
    }
    let err = Store::open(&db.path).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found, supported }
            if found == supported + 1),
        "{err:?}"
    );
    assert!(err.to_string().contains("newer than this baton supports"));
}

#[test]
fn in_memory_store_works() {
    let mut store = Store::open_in_memory().unwrap();
    store.upsert_app("a", "{}", "", 1).unwrap();
    assert_eq!(store.list_apps().unwrap().len(), 1);
}

#[test]
fn upsert_app_keeps_created_and_updates_spec() {
    let db = TempDb::new();
    let mut store = Store::open(&db.path).unwrap();
    let first = store.upsert_app("web", "{\"v\":1}", "v: 1\n", 100).unwrap();
    assert_eq!(first.created_ms, 100);
    assert_eq!(first.updated_ms, 100);
    let second = store.upsert_app("web", "{\"v\":2}", "v: 2\n", 200).unwrap();
    assert_eq!(
        second,
        AppRecord {
            name: "web".into(),
            spec_json: "{\"v\":2}".into(),
            spec_yaml: "v: 2\n".into(),
            created_ms: 100,
            updated_ms: 200,
        }
    );
    store.upsert_app("api", "{}", "", 300).unwrap();
    let names: Vec<_> = store
        .list_apps()
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, ["api", "web"]);
    assert_eq!(store.get_app("nope").unwrap(), None);
}

#[test]
fn revisions_are_numbered_per_app() {
    let (_db, mut store) = store_with_app("web");
    store.upsert_app("api", "{}", "", 1).unwrap();
    let w1 = store
        .create_revision("web", "1.0.0", "{}", "{}", "alice", 10)
        .unwrap();
    let a1 = store
        .create_revision("api", "0.1.0", "{}", "{}", "bob", 11)
        .unwrap();
    let w2 = store
        .create_revision("web", "1.1.0", "{\"K\":\"V\"}", "{}", "alice", 12)
        .unwrap();
    assert_eq!((w1.number, a1.number, w2.number), (1, 1, 2));
    assert_eq!(store.get_revision("web", 2).unwrap(), Some(w2.clone()));
    assert_eq!(store.get_revision("web", 3).unwrap(), None);
    assert_eq!(store.list_revisions("web").unwrap(), vec![w1, w2]);
    assert_eq!(store.list_revisions("api").unwrap(), vec![a1]);
}

#[test]
fn revision_of_unknown_app_is_an_error() {
    let db = TempDb::new();
    let mut store = Store::open(&db.path).unwrap();
    let err = store
        .create_revision("ghost", "1", "{}", "{}", "x", 1)
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownApp { ref app } if app == "ghost"));
}

#[test]
fn revisions_cannot_be_modified() {
    let (_db, mut store) = store_with_app("web");
    store
        .create_revision("web", "1.0.0", "{}", "{}", "alice", 10)
        .unwrap();
    assert!(
        store
            .conn
            .execute("UPDATE revisions SET version = 'x'", [])
            .is_err()
    );
    assert!(store.conn.execute("DELETE FROM revisions", []).is_err());
}

#[test]
fn generation_fence() {
    let (_db, mut store) = store_with_app("web");
    assert_eq!(store.load_state("web").unwrap(), None);

    let g1 = store
        .commit_transition("web", 0, "{\"s\":1}", &[], 100)
        .unwrap();
    assert_eq!(g1, 1);
    let g2 = store
        .commit_transition("web", 1, "{\"s\":2}", &[], 200)
        .unwrap();
    assert_eq!(g2, 2);

    // A writer still holding generation 1 is fenced off.
    let err = store
        .commit_transition("web", 1, "{\"s\":\"stale\"}", &[], 300)
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::GenerationConflict {
                expected: 1,
                found: 2
            }
        ),
        "{err:?}"
    );
    // Creating state that already exists is a conflict too.
    let err = store
        .commit_transition("web", 0, "{}", &[], 300)
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::GenerationConflict {
            expected: 0,
            found: 2
        }
    ));

    assert_eq!(
        store.load_state("web").unwrap(),
        Some(StateRecord {
            generation: 2,
            state_json: "{\"s\":2}".into(),
            updated_ms: 200,
        })
    );
}

#[test]
fn generation_fence_across_connections() {
    let db = TempDb::new();
    let mut a = Store::open(&db.path).unwrap();
    let mut b = Store::open(&db.path).unwrap();
    a.upsert_app("web", "{}", "", 1).unwrap();
    let g = a.commit_transition("web", 0, "{}", &[], 1).unwrap();
    b.commit_transition("web", g, "{\"by\":\"b\"}", &[], 2)
        .unwrap();
    let err = a
        .commit_transition("web", g, "{\"by\":\"a\"}", &[], 3)
        .unwrap_err();
    assert!(matches!(err, StoreError::GenerationConflict { .. }));
    assert_eq!(
        a.load_state("web").unwrap().unwrap().state_json,
        "{\"by\":\"b\"}"
    );
}

#[test]
fn commit_transition_is_atomic() {
    let (_db, mut store) = store_with_app("web");
    let events = [
        NewEvent::new("step", "started"),
        NewEvent {
            kind: "weight".into(),
            message: "10% to v2".into(),
            fields_json: "{\"weight\":10}".into(),
        },
    ];
    let g = store
        .commit_transition("web", 0, "{\"s\":1}", &events, 100)
        .unwrap();
    let logged = store.list_events("web", 0, 100).unwrap();
    assert_eq!(logged.len(), 2);
    assert_eq!(logged[1].fields_json, "{\"weight\":10}");
    assert!(logged.iter().all(|e| e.at_ms == 100 && e.app == "web"));

    // A conflicting transition appends none of its events and leaves the state alone.
    let err = store
        .commit_transition("web", g + 7, "{\"s\":\"bad\"}", &events, 200)
        .unwrap_err();
    assert!(matches!(err, StoreError::GenerationConflict { .. }));
    assert_eq!(store.list_events("web", 0, 100).unwrap(), logged);
    assert_eq!(store.load_state("web").unwrap().unwrap().generation, g);
}

#[test]
fn commit_transition_requires_app() {
    let db = TempDb::new();
    let mut store = Store::open(&db.path).unwrap();
    let err = store
        .commit_transition("ghost", 0, "{}", &[NewEvent::new("k", "m")], 1)
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownApp { .. }));
    assert!(store.list_events("ghost", 0, 10).unwrap().is_empty());
}

#[test]
fn last_event_of_a_kind_is_the_newest_of_that_kind_and_app() {
    let db = TempDb::new();
    let mut store = Store::open(&db.path).unwrap();
    assert!(store.last_event_of_kind("web", "check").unwrap().is_none());
    for (i, (app, kind)) in [
        ("web", "check"),
        ("web", "other"),
        ("api", "check"),
        ("web", "check"),
        ("web", "other"),
    ]
    .into_iter()
    .enumerate()
    {
        store
            .append_event(app, &NewEvent::new(kind, format!("m{i}")), i as i64)
            .unwrap();
    }
    let last = store.last_event_of_kind("web", "check").unwrap().unwrap();
    assert_eq!((last.message.as_str(), last.at_ms), ("m3", 3));
    assert_eq!(
        store
            .last_event_of_kind("api", "check")
            .unwrap()
            .unwrap()
            .message,
        "m2"
    );
    // Reopened from the file: the same answer.
    drop(store);
    let store = Store::open(&db.path).unwrap();
    assert_eq!(
        store
            .last_event_of_kind("web", "check")
            .unwrap()
            .unwrap()
            .message,
        "m3"
    );
}

#[test]
fn events_page_by_id_and_are_per_app() {
    let db = TempDb::new();
    let mut store = Store::open(&db.path).unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let e = store
            .append_event("web", &NewEvent::new("k", format!("m{i}")), i)
            .unwrap();
        ids.push(e.id);
        store
            .append_event("api", &NewEvent::new("k", "other"), i)
            .unwrap();
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let page1 = store.list_events("web", 0, 2).unwrap();
    assert_eq!(
        page1.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
        ["m0", "m1"]
    );
    let page2 = store.list_events("web", page1[1].id, 10).unwrap();
    assert_eq!(
        page2.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
        ["m2", "m3", "m4"]
    );
    assert!(store.conn.execute("DELETE FROM events", []).is_err());
    assert!(
        store
            .conn
            .execute("UPDATE events SET message = 'x'", [])
            .is_err()
    );
}

fn new_history(app: &str, to: &str) -> NewHistory {
    NewHistory {
        app: app.into(),
        revision: 2,
        from_version: Some("1.2.3".into()),
        to_version: to.into(),
        environment: "production".into(),
        operator: "alice".into(),
        strategy: "canary".into(),
        kind: "deploy".into(),
        strategy_json: None,
    }
}

#[test]
fn a_one_off_strategy_is_kept_with_its_rollout() {
    let db = TempDb::new();
    let mut store = Store::open(&db.path).unwrap();
    store.upsert_app("shop", "{}", "", 1).unwrap();
    let plain = store.start_history(&new_history("shop", "v2"), 10).unwrap();
    let one_off = store
        .start_history(
            &NewHistory {
                strategy: "blue-green".into(),
                strategy_json: Some(r#"{"blue_green":{}}"#.into()),
                ..new_history("shop", "v3")
            },
            20,
        )
        .unwrap();
    drop(store);
    let store = Store::open(&db.path).unwrap();
    assert_eq!(store.rollout_strategy(plain).unwrap(), None);
    assert_eq!(
        store.rollout_strategy(one_off).unwrap().as_deref(),
        Some(r#"{"blue_green":{}}"#)
    );
    assert!(matches!(
        store.rollout_strategy(999),
        Err(StoreError::HistoryNotFound { id: 999 })
    ));
}

#[test]
fn history_lifecycle_and_order() {
    let db = TempDb::new();
    let mut store = Store::open(&db.path).unwrap();
    let first = store
        .start_history(&new_history("web", "1.3.0"), 100)
        .unwrap();
    let second = store
        .start_history(&new_history("web", "1.4.0"), 200)
        .unwrap();
    // Same start time: the later id is newer.
    let third = store
        .start_history(&new_history("web", "1.5.0"), 200)
        .unwrap();
    store
        .start_history(&new_history("api", "9.9.9"), 150)
        .unwrap();

    store
        .finish_history(first, "rolled_back", "OOM, rolled back to v1.2.3", 120)
        .unwrap();

    let hist = store.list_history("web").unwrap();
    assert_eq!(
        hist.iter().map(|h| h.id).collect::<Vec<_>>(),
        [third, second, first]
    );
    let h1 = &hist[2];
    assert_eq!(h1.result, "rolled_back");
    assert_eq!(h1.notes, "OOM, rolled back to v1.2.3");
    assert_eq!(h1.finished_ms, Some(120));
    assert_eq!(h1.from_version.as_deref(), Some("1.2.3"));
    assert_eq!(hist[0].result, HISTORY_IN_PROGRESS);
    assert_eq!(hist[0].finished_ms, None);
    assert_eq!(hist[0].notes, "");
}

#[test]
fn history_finishes_once() {
    let db = TempDb::new();
    let mut store = Store::open(&db.path).unwrap();
    let id = store
        .start_history(&new_history("web", "2.0.0"), 1)
        .unwrap();
    store.finish_history(id, "succeeded", "", 2).unwrap();
    let err = store.finish_history(id, "failed", "again", 3).unwrap_err();
    assert!(matches!(err, StoreError::HistoryAlreadyFinished { id: i } if i == id));
    assert_eq!(store.list_history("web").unwrap()[0].result, "succeeded");

    let err = store
        .finish_history(id + 100, "succeeded", "", 3)
        .unwrap_err();
    assert!(matches!(err, StoreError::HistoryNotFound { .. }));

    let id2 = store
        .start_history(&new_history("web", "2.0.1"), 4)
        .unwrap();
    let err = store
        .finish_history(id2, HISTORY_IN_PROGRESS, "", 5)
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)));
    assert!(store.conn.execute("DELETE FROM history", []).is_err());
}

#[test]
fn records_round_trip_through_serde() {
    let rec = HistoryRecord {
        id: 1,
        app: "web".into(),
        revision: 3,
        from_version: None,
        to_version: "1.0.0".into(),
        environment: "staging".into(),
        operator: "bob".into(),
        strategy: "rolling".into(),
        kind: "deploy".into(),
        result: "succeeded".into(),
        notes: String::new(),
        started_ms: 1,
        finished_ms: Some(2),
        approvers: vec!["ana".into()],
    };
    let json = serde_json::to_string(&rec).unwrap();
    assert_eq!(serde_json::from_str::<HistoryRecord>(&json).unwrap(), rec);
}

#[test]
fn deleting_an_app_keeps_its_record_and_reapplying_continues_it() {
    let (_db, mut store) = store_with_app("web");
    store.upsert_app("bare", "{}", "", 1).unwrap();
    store
        .create_revision("web", "v1", "{}", "{}", "alice", 10)
        .unwrap();
    let h = store.start_history(&new_history("web", "v1"), 11).unwrap();
    store.finish_history(h, "succeeded", "", 12).unwrap();
    store.commit_transition("web", 0, "{}", &[], 13).unwrap();

    store.delete_app("web", 20).unwrap();
    store.delete_app("bare", 20).unwrap();
    store.delete_app("never-was", 20).unwrap();
    assert!(store.list_apps().unwrap().is_empty());
    assert_eq!(store.get_app("web").unwrap(), None);
    assert_eq!(store.load_state("web").unwrap(), None, "its state is gone");
    assert_eq!(store.list_history("web").unwrap().len(), 1, "history kept");
    assert_eq!(store.list_revisions("web").unwrap().len(), 1);

    // Applying it again brings it back, revision numbers go on.
    store.upsert_app("web", "{}", "", 30).unwrap();
    assert_eq!(store.list_apps().unwrap().len(), 1);
    let r = store
        .create_revision("web", "v2", "{}", "{}", "alice", 31)
        .unwrap();
    assert_eq!(r.number, 2);
    assert_eq!(store.commit_transition("web", 0, "{}", &[], 32).unwrap(), 1);
}

#[test]
fn a_pinned_revision_keeps_its_image_digest() {
    let mut store = Store::open_in_memory().unwrap();
    store.upsert_app("web", "{}", "", 1).unwrap();
    let plain = store
        .create_revision("web", "v1", "{}", "{}", "ops", 2)
        .unwrap();
    assert_eq!(plain.image, None);
    let pin = ImagePin {
        reference: "shop:v2".into(),
        digest: "sha256:abc".into(),
    };
    let pinned = store
        .create_revision_pinned("web", "v2", "{}", "{}", "ops", 3, Some(&pin))
        .unwrap();
    assert_eq!(pinned.number, 2);
    let read = store.get_revision("web", 2).unwrap().unwrap();
    assert_eq!(read.image, Some(pin.clone()));
    let all = store.list_revisions("web").unwrap();
    assert_eq!(all[0].image, None);
    assert_eq!(all[1].image, Some(pin));
}

#[test]
fn an_injected_fault_fails_a_write_before_or_after_it_lands() {
    let (_db, mut store) = store_with_app("demo");
    let faults = std::sync::Arc::new(std::sync::Mutex::new(vec![
        Some(WriteFault::FailAfterCommit),
        Some(WriteFault::Fail),
    ]));
    let next = faults.clone();
    store.set_write_faults(Some(Box::new(move |_| {
        next.lock().unwrap().pop().flatten()
    })));
    // Fail: nothing written.
    let err = store
        .commit_transition("demo", 0, "{}", &[], 1)
        .unwrap_err();
    assert!(matches!(err, StoreError::Sqlite(_)), "{err}");
    assert!(store.load_state("demo").unwrap().is_none());
    // Fail after commit: written, and the caller told it failed.
    assert!(store.commit_transition("demo", 0, "{}", &[], 2).is_err());
    assert_eq!(store.load_state("demo").unwrap().unwrap().generation, 1);
    // No more faults.
    assert_eq!(store.commit_transition("demo", 1, "{}", &[], 3).unwrap(), 2);
    store.set_write_faults(None);
}

#[test]
fn tokens_are_kept_hashed_revoked_not_deleted_and_names_not_reused() {
    let (_db, mut store) = store_with_app("web");
    let t = TokenRecord {
        name: "ci".into(),
        role: "operator".into(),
        apps: vec!["web".into()],
        hash: "ab".repeat(32),
        created_by: "admin".into(),
        created_ms: 5,
        revoked_ms: None,
    };
    store.create_token(&t).unwrap();
    assert_eq!(store.token_by_hash(&t.hash).unwrap(), Some(t.clone()));
    assert!(store.create_token(&t).is_err(), "one name, one token");
    assert!(store.revoke_token("ci", 9).unwrap());
    assert!(!store.revoke_token("ci", 10).unwrap(), "already revoked");
    assert_eq!(store.token_by_hash(&t.hash).unwrap(), None);
    assert_eq!(store.list_tokens().unwrap()[0].revoked_ms, Some(9));
    assert!(store.conn.execute("DELETE FROM tokens", []).is_err());
    // The hash is never serialized.
    assert!(!serde_json::to_string(&t).unwrap().contains("abab"));
}

#[test]
fn approvers_are_added_while_a_rollout_runs() {
    let (_db, mut store) = store_with_app("web");
    let id = store
        .start_history(
            &NewHistory {
                app: "web".into(),
                revision: 1,
                from_version: None,
                to_version: "v1".into(),
                environment: "prod".into(),
                operator: "ana".into(),
                strategy: "canary".into(),
                kind: "deploy".into(),
                strategy_json: None,
            },
            1,
        )
        .unwrap();
    store.add_history_approver(id, "bo").unwrap();
    store.add_history_approver(id, "cy,dee").unwrap();
    store.finish_history(id, "succeeded", "", 2).unwrap();
    store.add_history_approver(id, "late").unwrap();
    assert_eq!(
        store.list_history("web").unwrap()[0].approvers,
        vec!["bo", "cy dee"]
    );
}
