//! The HTTP face of HA without a database: a node that has not been granted the lease is a
//! standby (every client and admin call answers `503 not_leader`, readiness too; health,
//! readiness and the demo key stay open), and a server without HA is `single` and ready.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use axum::http::StatusCode;
use keyfloat_server::ha::{Candidate, Cluster};
use keyfloat_testkit::app::harness;
use serde_json::json;

#[tokio::test]
async fn a_single_server_is_ready_and_says_so() {
    let h = harness(false).await;
    let (status, body) = h.get("/api/v4/ready").await;
    assert_eq!((status, body["role"].as_str()), (StatusCode::OK, Some("single")));
    let (_, health) = h.get("/api/v4/health").await;
    assert_eq!(health["role"], "single");
    assert!(health["node_id"].is_null() && health["leader"].is_null(), "{health}");
}

#[tokio::test]
async fn a_standby_refuses_every_api_call_with_not_leader_but_shows_its_health() {
    let h = harness(false).await;
    let node = Cluster::new(Candidate {
        node_id: "b".into(),
        advertise_url: Some("http://b.test:8080".into()),
        lease: Duration::from_secs(5),
    });
    h.state.set_cluster(node);
    let (status, body) = h.get("/api/v4/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["code"], "not_leader");
    assert!(body["leader"].is_null(), "no leader known yet: {body}");
    let calls = [
        ("POST", "/api/v4/register", Some(json!({"product": "p", "user": "u"}))),
        (
            "POST",
            "/api/v4/add_consumption",
            Some(json!({"product": "p", "consumptions": 1})),
        ),
        ("GET", "/api/v4/license", None),
        ("GET", "/api/v4/registrations", None),
        ("GET", "/api/v4/addProduct?product=p&licenseKey=K", None),
        ("GET", "/auth", None),
    ];
    for (method, uri, body) in calls {
        let (status, answer) = h.call(method, uri, body, None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{method} {uri}: {answer}");
        assert_eq!(answer["code"], "not_leader", "{method} {uri}: {answer}");
    }
    let (status, health) = h.get("/api/v4/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["role"], "standby");
    assert_eq!(health["node_id"], "b");
    assert_eq!(health["epoch"], 0);
    assert_eq!(health["cluster"]["advertise_url"], "http://b.test:8080");
    let (status, _) = h.call("POST", "/api/v4/sim/unplug", None, None).await;
    assert_ne!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the demo key stays reachable on a standby"
    );
}
