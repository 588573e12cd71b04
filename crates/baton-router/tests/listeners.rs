//! Listener state per app: an app whose address cannot be bound is reported
//! as not listening (in the push result and in the stats) while the other apps
//! of the same table are served.

mod common;

use baton_router::Router;
use common::*;

#[tokio::test]
async fn an_app_whose_port_is_taken_is_reported_and_the_others_are_served() {
    let a = backend("a").await;
    // Another program holds this port.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_addr = held.local_addr().unwrap();
    let mut cfg = config(1, 1000, &[("v1", 1, &[a.addr])]);
    let mut blocked = cfg.apps[0].clone();
    blocked.app = "blocked".into();
    blocked.listen = held_addr;
    cfg.apps.push(blocked);
    let router = Router::new();
    let res = router.apply(cfg.clone()).expect("push accepted");
    let web = res.listeners.iter().find(|l| l.app == "web").unwrap();
    assert!(web.error.is_none(), "{:?}", web.error);
    assert_eq!(get(web.listen).await.body, "a", "the other app is served");

    let stats = router.stats();
    let by_app = |app: &str| {
        stats
            .listeners
            .iter()
            .find(|l| l.app == app)
            .cloned()
            .unwrap_or_else(|| panic!("no listener entry for {app}: {:?}", stats.listeners))
    };
    assert_eq!(by_app("web").error, None);
    assert_eq!(by_app("web").listen, web.listen);
    let blocked = by_app("blocked");
    assert_eq!(blocked.listen, held_addr);
    assert!(
        blocked.error.as_deref().is_some_and(|e| !e.is_empty()),
        "{blocked:?}"
    );

    // Once the port is free, the next push binds it and the error is gone.
    drop(held);
    cfg.generation = 2;
    cfg.apps[0].listen = web.listen;
    let res = router.apply(cfg).expect("push accepted");
    assert!(res.listeners.iter().all(|l| l.error.is_none()), "{res:?}");
    assert!(router.stats().listeners.iter().all(|l| l.error.is_none()));
    assert!(router.shutdown(std::time::Duration::from_secs(5)).await);
}
