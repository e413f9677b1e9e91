//! kube-rs (the client the agent and server use) against the fake API server: lists with
//! selectors and pages, the watcher through its whole life (initial list, events, a 410 after
//! an outage that makes it relist), raw watches (bookmarks, selector transitions, timeouts),
//! TokenRequest and TokenReview, errors, TLS.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::{
    BoundObjectReference, TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec,
};
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_fn};
use kube::{Client, Config, ResourceExt};
use serde_json::{Value, json};
use sigil_fake_kube::FakeKube;
use std::time::Duration;

async fn client(kube: &FakeKube) -> Client {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&path).unwrap();
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&path).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    Client::try_from(config).unwrap()
}

fn pod(ns: &str, name: &str, node: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}})
}

fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter().map(|p| p.name_any()).collect()
}

/// The next item of `stream`, failing the test after 10 s.
async fn next<S: futures::Stream + Unpin>(stream: &mut S) -> S::Item {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("no event within 10 s")
        .expect("stream ended")
}

#[tokio::test]
async fn list_with_selectors_and_pages() {
    let kube = FakeKube::start().await.unwrap();
    kube.apply(pod("a", "p1", "n1", "x"));
    kube.apply(pod("a", "p2", "n2", "x"));
    kube.apply(pod("b", "p3", "n1", "y"));
    kube.apply(pod("b", "p4", "n1", "x"));
    let pods: Api<Pod> = Api::all(client(&kube).await);

    let lp = ListParams::default()
        .labels("app=x")
        .fields("spec.nodeName=n1");
    let list = pods.list(&lp).await.unwrap();
    assert_eq!(names(&list.items), ["p1", "p4"]);
    assert_eq!(
        list.metadata.resource_version,
        Some(kube.resource_version().to_string())
    );
    let sent = kube
        .requests()
        .into_iter()
        .rfind(|r| r.path == "/api/v1/pods")
        .unwrap();
    assert_eq!(sent.param("labelSelector").as_deref(), Some("app=x"));
    assert_eq!(
        sent.param("fieldSelector").as_deref(),
        Some("spec.nodeName=n1")
    );

    let set = pods
        .list(&ListParams::default().labels("app in (x,y),app!=y"))
        .await
        .unwrap();
    assert_eq!(names(&set.items), ["p1", "p2", "p4"]);
    let ns_b: Api<Pod> = Api::namespaced(client(&kube).await, "b");
    assert_eq!(
        names(&ns_b.list(&ListParams::default()).await.unwrap().items),
        ["p3", "p4"]
    );

    // limit 1: a page and a continue token, until the last page.
    let mut seen = Vec::new();
    let mut lp = ListParams::default().limit(1);
    loop {
        let page = pods.list(&lp).await.unwrap();
        assert_eq!(page.items.len(), 1);
        seen.extend(names(&page.items));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => {
                assert!(page.metadata.remaining_item_count.is_some_and(|n| n > 0));
                lp = lp.continue_token(&c);
            }
            None => break,
        }
    }
    assert_eq!(seen, ["p1", "p2", "p3", "p4"]);

    // An unsupported field is the real 400.
    let err = pods
        .list(&ListParams::default().fields("spec.bogus=1"))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("{err:?}")
    };
    assert_eq!(
        (status.code, status.message.as_str()),
        (400, "field label not supported: spec.bogus")
    );
}

#[tokio::test]
async fn get_errors_and_authentication() {
    let kube = FakeKube::start().await.unwrap();
    let c = client(&kube).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let kube::Error::Api(status) = pods.get("nope").await.unwrap_err() else {
        panic!()
    };
    assert_eq!(status.code, 404);
    assert_eq!(status.reason, "NotFound");
    assert_eq!(status.message, r#"pods "nope" not found"#);
    assert!(pods.get_opt("nope").await.unwrap().is_none());

    let created = pods
        .create(
            &PostParams::default(),
            &serde_json::from_value(pod("default", "p", "n1", "x")).unwrap(),
        )
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    assert_eq!(
        kube.get("Pod", Some("default"), "p").unwrap()["metadata"]["uid"],
        json!(created.metadata.uid)
    );
    let kube::Error::Api(status) = pods
        .create(&PostParams::default(), &created)
        .await
        .unwrap_err()
    else {
        panic!()
    };
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "AlreadyExists")
    );
    let deleted = pods.delete("p", &Default::default()).await.unwrap();
    assert!(deleted.left().is_some());
    assert!(kube.get("Pod", Some("default"), "p").is_none());

    // No token: 401. An issued token for the API server's audience works as a bearer.
    let anon = Client::try_from(Config::new(kube.url().parse().unwrap())).unwrap();
    let kube::Error::Api(status) = Api::<Node>::all(anon)
        .list(&ListParams::default())
        .await
        .unwrap_err()
    else {
        panic!()
    };
    assert_eq!(status.code, 401);
    let token = kube
        .issue_token("default", "default", &[], None, Duration::from_secs(600))
        .unwrap();
    let mut config = Config::new(kube.url().parse().unwrap());
    config.auth_info.token = Some(token.into());
    let sa_client = Client::try_from(config).unwrap();
    assert!(
        Api::<Node>::all(sa_client)
            .list(&ListParams::default())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn watcher_lifecycle_and_relist_after_410() {
    let kube = FakeKube::start().await.unwrap();
    kube.apply(pod("a", "p1", "n1", "x"));
    kube.apply(pod("a", "p2", "n2", "x"));
    let api: Api<Pod> = Api::all(client(&kube).await);
    let mut events = watch_fn(api, watcher::Config::default().fields("spec.nodeName=n1"))
        .default_backoff()
        .boxed();

    assert!(matches!(next(&mut events).await.unwrap(), Event::Init));
    let Event::InitApply(p) = next(&mut events).await.unwrap() else {
        panic!()
    };
    assert_eq!(p.name_any(), "p1");
    assert!(matches!(next(&mut events).await.unwrap(), Event::InitDone));

    kube.apply(pod("a", "p3", "n1", "x"));
    kube.apply(pod("a", "p4", "n2", "x")); // not on n1: not seen
    let Event::Apply(p) = next(&mut events).await.unwrap() else {
        panic!()
    };
    assert_eq!(p.name_any(), "p3");
    kube.delete("Pod", Some("a"), "p1").unwrap();
    let Event::Delete(p) = next(&mut events).await.unwrap() else {
        panic!()
    };
    assert_eq!(p.name_any(), "p1");
    // Moving to another node makes it stop matching: a DELETED for this watcher.
    kube.apply(pod("a", "p3", "n2", "x"));
    let Event::Delete(p) = next(&mut events).await.unwrap() else {
        panic!()
    };
    assert_eq!(p.name_any(), "p3");

    // Outage: changes while down, and the history compacted. The watcher's resume gets 410
    // and it relists, seeing the state after the outage.
    kube.stop().await;
    kube.apply(pod("a", "p5", "n1", "x"));
    kube.compact();
    let lists_before = kube.requests().iter().filter(|r| !r.is_watch()).count();
    kube.restart().await.unwrap();
    let mut saw_410 = false;
    let relisted = loop {
        match next(&mut events).await {
            Err(watcher::Error::WatchError(s)) if s.code == 410 => saw_410 = true,
            Err(_) => {} // connection refused or reset while down
            Ok(Event::Init) => {}
            Ok(Event::InitApply(p)) => break p,
            Ok(other) => panic!("unexpected {other:?}"),
        }
    };
    assert!(saw_410, "the resume after compaction must get 410 Gone");
    assert_eq!(relisted.name_any(), "p5");
    assert!(matches!(next(&mut events).await.unwrap(), Event::InitDone));
    assert!(
        kube.requests().iter().filter(|r| !r.is_watch()).count() > lists_before,
        "relisted"
    );
    kube.apply(pod("a", "p6", "n1", "x"));
    let Event::Apply(p) = next(&mut events).await.unwrap() else {
        panic!()
    };
    assert_eq!(p.name_any(), "p6");

    // One list per (re)start, otherwise only watches: the client does not poll.
    let lists = kube
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/api/v1/pods" && !r.is_watch())
        .count();
    assert_eq!(lists, 2);
}

#[tokio::test]
async fn raw_watch_bookmarks_transitions_and_timeout() {
    let kube = FakeKube::start().await.unwrap();
    kube.set_bookmark_interval(Duration::from_millis(200));
    kube.apply(pod("a", "p1", "n1", "x"));
    let api: Api<Pod> = Api::all(client(&kube).await);

    let wp = WatchParams::default().labels("app=x"); // asks for bookmarks by default
    let mut stream = api.watch(&wp, "0").await.unwrap().boxed();
    let WatchEvent::Added(p) = next(&mut stream).await.unwrap() else {
        panic!()
    };
    assert_eq!(p.name_any(), "p1");
    let WatchEvent::Bookmark(b) = next(&mut stream).await.unwrap() else {
        panic!()
    };
    assert_eq!(
        b.metadata.resource_version,
        kube.resource_version().to_string()
    );

    // The label goes: DELETED (with the change's version); it comes back: ADDED.
    kube.apply(pod("a", "p1", "n1", "y"));
    let ev = loop {
        match next(&mut stream).await.unwrap() {
            WatchEvent::Bookmark(_) => continue,
            ev => break ev,
        }
    };
    let WatchEvent::Deleted(p) = ev else {
        panic!("{ev:?}")
    };
    assert_eq!(
        p.resource_version(),
        Some(kube.resource_version().to_string())
    );
    kube.apply(pod("a", "p1", "n1", "x"));
    let ev = loop {
        match next(&mut stream).await.unwrap() {
            WatchEvent::Bookmark(_) => continue,
            ev => break ev,
        }
    };
    assert!(matches!(ev, WatchEvent::Added(_)), "{ev:?}");

    // Resuming from a version replays what came after it.
    let from = kube.resource_version().to_string();
    kube.apply(pod("a", "p2", "n1", "x"));
    let mut resumed = api
        .watch(&WatchParams::default(), &from)
        .await
        .unwrap()
        .boxed();
    let WatchEvent::Added(p) = next(&mut resumed).await.unwrap() else {
        panic!()
    };
    assert_eq!(p.name_any(), "p2");

    // A version older than the history: the real 410 as a watch event.
    kube.compact();
    let mut gone = api
        .watch(&WatchParams::default(), "1")
        .await
        .unwrap()
        .boxed();
    let WatchEvent::Error(e) = next(&mut gone).await.unwrap() else {
        panic!()
    };
    assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
    assert!(
        e.message.starts_with("too old resource version: 1 ("),
        "{}",
        e.message
    );

    // timeoutSeconds ends the stream cleanly.
    let mut short = api
        .watch(
            &WatchParams::default().timeout(1),
            &kube.resource_version().to_string(),
        )
        .await
        .unwrap()
        .boxed();
    let until_end = async {
        while let Some(ev) = short.try_next().await.unwrap() {
            assert!(matches!(ev, WatchEvent::Bookmark(_)), "{ev:?}");
        }
    };
    tokio::time::timeout(Duration::from_secs(5), until_end)
        .await
        .expect("the stream ends at its timeout");
}

#[tokio::test]
async fn token_request_and_review() {
    let kube = FakeKube::start().await.unwrap();
    kube.apply(json!({"kind": "Namespace", "metadata": {"name": "spire"}}));
    kube.apply(
        json!({"kind": "ServiceAccount", "metadata": {"name": "agent", "namespace": "spire"}}),
    );
    let node = kube.apply(json!({"kind": "Node", "metadata": {"name": "n1"}}));
    let p = kube.apply(pod("spire", "agent-0", "n1", "agent"));
    let c = client(&kube).await;

    let sas: Api<ServiceAccount> = Api::namespaced(c.clone(), "spire");
    let request = |aud: &str, uid: Option<String>| TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![aud.to_string()],
            expiration_seconds: Some(600),
            bound_object_ref: Some(BoundObjectReference {
                kind: Some("Pod".into()),
                api_version: Some("v1".into()),
                name: Some("agent-0".into()),
                uid,
            }),
        },
        ..Default::default()
    };
    let tr = sas
        .create_token_request(
            "agent",
            &PostParams::default(),
            &request(
                "spire-server",
                p["metadata"]["uid"].as_str().map(String::from),
            ),
        )
        .await
        .unwrap();
    let status = tr.status.unwrap();
    let token = status.token;

    let reviews: Api<TokenReview> = Api::all(c.clone());
    let review = |aud: &'static str| {
        let reviews = reviews.clone();
        let token = token.clone();
        async move {
            let r = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token),
                    audiences: Some(vec![aud.into()]),
                },
                ..Default::default()
            };
            reviews
                .create(&PostParams::default(), &r)
                .await
                .unwrap()
                .status
                .unwrap()
        }
    };
    let ok = review("spire-server").await;
    assert_eq!(ok.authenticated, Some(true));
    assert_eq!(ok.audiences, Some(vec!["spire-server".to_string()]));
    let user = ok.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:spire:agent")
    );
    let extra = user.extra.unwrap();
    assert_eq!(extra["authentication.kubernetes.io/pod-name"], ["agent-0"]);
    assert_eq!(
        extra["authentication.kubernetes.io/pod-uid"],
        [p["metadata"]["uid"].as_str().unwrap()]
    );
    assert_eq!(extra["authentication.kubernetes.io/node-name"], ["n1"]);
    assert_eq!(
        extra["authentication.kubernetes.io/node-uid"],
        [node["metadata"]["uid"].as_str().unwrap()]
    );
    assert!(extra["authentication.kubernetes.io/credential-id"][0].starts_with("JTI="));

    let bad = review("other").await;
    assert_eq!(bad.authenticated, Some(false));
    assert_eq!(
        bad.error.as_deref(),
        Some(
            r#"[invalid bearer token, token audiences ["spire-server"] is invalid for the target audiences ["other"], unknown]"#
        )
    );

    // A wrong pod uid is refused at issuance; a deleted pod invalidates the token.
    let kube::Error::Api(s) = sas
        .create_token_request(
            "agent",
            &PostParams::default(),
            &request("x", Some("wrong".into())),
        )
        .await
        .unwrap_err()
    else {
        panic!()
    };
    assert_eq!(s.code, 409);
    kube.delete("Pod", Some("spire"), "agent-0").unwrap();
    let gone = review("spire-server").await;
    assert_eq!(gone.authenticated, Some(false));
    assert!(gone.error.unwrap().contains("invalidated"));
    let kube::Error::Api(s) = sas
        .create_token_request("agent", &PostParams::default(), &request("x", None))
        .await
        .unwrap_err()
    else {
        panic!()
    };
    assert_eq!(s.code, 404);
}

#[tokio::test]
async fn tls_with_kubeconfig_ca() {
    let kube = FakeKube::start_tls().await.unwrap();
    assert!(kube.url().starts_with("https://127.0.0.1:"));
    kube.apply(json!({"kind": "Node", "metadata": {"name": "n1", "labels": {"zone": "a"}}}));
    let nodes: Api<Node> = Api::all(client(&kube).await);
    let list = nodes
        .list(&ListParams::default().labels("zone=a"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    // Stop drops the connection; restart serves the same state on the same address.
    kube.stop().await;
    assert!(nodes.get("n1").await.is_err());
    kube.restart().await.unwrap();
    assert_eq!(nodes.get("n1").await.unwrap().name_any(), "n1");
}

#[tokio::test]
async fn reflector_with_streaming_lists() {
    let kube = FakeKube::start().await.unwrap();
    kube.apply(pod("a", "p1", "n1", "x"));
    kube.apply(pod("a", "p2", "n1", "y"));
    let api: Api<Pod> = Api::all(client(&kube).await);
    let (reader, writer) = kube::runtime::reflector::store();
    // sendInitialEvents: the initial state as ADDED events closed by the initial-events-end
    // bookmark, instead of a list.
    let config = watcher::Config::default().labels("app=x").streaming_lists();
    let mut events = kube::runtime::reflector(writer, watch_fn(api, config))
        .default_backoff()
        .boxed();
    loop {
        if let Event::InitDone = next(&mut events).await.unwrap() {
            break;
        }
    }
    let cached = |r: &kube::runtime::reflector::Store<Pod>| {
        let mut n: Vec<String> = r.state().iter().map(|p| p.name_any()).collect();
        n.sort();
        n
    };
    assert_eq!(cached(&reader), ["p1"]);
    kube.apply(pod("a", "p3", "n2", "x"));
    assert!(matches!(next(&mut events).await.unwrap(), Event::Apply(_)));
    assert_eq!(cached(&reader), ["p1", "p3"]);
    kube.apply(pod("a", "p1", "n1", "y")); // leaves the selector
    assert!(matches!(next(&mut events).await.unwrap(), Event::Delete(_)));
    assert_eq!(cached(&reader), ["p3"]);
    let reqs = kube.requests();
    assert!(
        reqs.iter().all(|r| r.is_watch()),
        "no list in streaming mode"
    );
    assert_eq!(reqs[0].param("sendInitialEvents").as_deref(), Some("true"));
}

#[tokio::test]
async fn status_subresource_patches_and_conflicts() {
    use kube::api::{Patch, PatchParams};
    let kube = FakeKube::start().await.unwrap();
    kube.apply(json!({"kind": "Namespace", "metadata": {"name": "a"}}));
    kube.apply(pod("a", "p", "n1", "x"));
    let pods: Api<Pod> = Api::namespaced(client(&kube).await, "a");

    // /status changes only the status; the main resource keeps the stored status.
    let p = pods
        .patch_status(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}, "spec": {"nodeName": "zz"}})),
        )
        .await
        .unwrap();
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Running"));
    assert_eq!(p.spec.unwrap().node_name.as_deref(), Some("n1"));
    let p = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Strategic(
                json!({"metadata": {"labels": {"b": "1"}}, "status": {"phase": "Failed"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(p.labels().get("b").map(String::as_str), Some("1"));
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Running"));

    // Optimistic concurrency: a replace with an old resourceVersion is a 409.
    let mut stale = p.clone();
    pods.patch(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"c": "1"}}})),
    )
    .await
    .unwrap();
    stale.labels_mut().insert("d".into(), "1".into());
    let kube::Error::Api(s) = pods
        .replace("p", &PostParams::default(), &stale)
        .await
        .unwrap_err()
    else {
        panic!()
    };
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
    let fresh = pods.get("p").await.unwrap();
    assert_eq!(
        pods.replace("p", &PostParams::default(), &fresh)
            .await
            .unwrap()
            .metadata
            .uid,
        fresh.metadata.uid
    );

    // Deleting a namespace deletes what is in it.
    kube.delete("Namespace", None, "a").unwrap();
    assert!(kube.get("Pod", Some("a"), "p").is_none());
    assert!(kube.get("ServiceAccount", Some("a"), "default").is_none());
}
