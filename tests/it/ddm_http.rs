//! The DDM endpoints over real HTTP on loopback: the NanoMDM `-dm` contract, HMAC in both
//! directions, and hostile input answered correctly with the store left intact.

use std::sync::Arc;

use ddm_update_operator::backend::embedded::Embedded;
use ddm_update_operator::backend::store::Store;
use ddm_update_operator::backend::{Assignment, Backend};
use ddm_update_operator::clock::Clock;
use ddm_update_operator::declarations::{self, Declaration};
use serde_json::{Value, json};

use crate::support::ddm::{DdmServer, ddm_server, sign};

async fn server(receive_key: Option<&[u8]>, send_key: Option<&[u8]>) -> DdmServer {
    ddm_server(receive_key, send_key, Clock::system()).await
}

async fn get(
    base: &str,
    path: &str,
    enrollment: Option<&str>,
    signature: Option<String>,
) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(format!("{base}{path}"));
    if let Some(enrollment) = enrollment {
        request = request.header("X-Enrollment-ID", enrollment);
    }
    if let Some(signature) = signature {
        request = request.header("X-Hmac-Signature", signature);
    }
    request.send().await.expect("loopback request")
}

async fn put_status(
    base: &str,
    enrollment: &str,
    body: Vec<u8>,
    signature: Option<String>,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .put(format!("{base}status"))
        .header("X-Enrollment-ID", enrollment)
        .header("Content-Type", "application/json")
        .body(body);
    if let Some(signature) = signature {
        request = request.header("X-Hmac-Signature", signature);
    }
    request.send().await.expect("loopback request")
}

fn enforcement() -> Declaration {
    declarations::enforcement(
        &"26.4".parse().expect("version"),
        None,
        jiff::civil::date(2026, 9, 1).at(19, 0, 0, 0),
        None,
    )
}

#[tokio::test]
async fn a_new_device_gets_the_bootstrap_set_and_fetches_exactly_it() {
    let mut s = server(None, None).await;
    let tokens: Value = get(&s.base, "tokens", Some("DEV-1"), None)
        .await
        .json()
        .await
        .expect("json");
    let token = tokens["SyncTokens"]["DeclarationsToken"]
        .as_str()
        .expect("token")
        .to_string();
    assert!(
        tokens["SyncTokens"]["Timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    // Served from memory: a GET stores nothing (NanoMDM's signature does not bind the
    // enrollment id), so there is nothing for the resolver to hear of.
    assert!(s.reported.try_recv().is_err(), "a GET is not a report");
    assert!(
        s.store.served_set("DEV-1").is_none(),
        "nothing stored for a GET"
    );

    let items: Value = get(&s.base, "declaration-items", Some("DEV-1"), None)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(items["DeclarationsToken"], token.as_str());
    for kind in ["Activations", "Configurations", "Assets", "Management"] {
        assert!(
            items["Declarations"][kind].is_array(),
            "{kind} is always present"
        );
    }
    let configuration = &items["Declarations"]["Configurations"][0];
    let identifier = configuration["Identifier"].as_str().expect("identifier");
    let response = get(
        &s.base,
        &format!("declaration/configuration/{identifier}"),
        Some("DEV-1"),
        None,
    )
    .await;
    assert_eq!(response.status(), 200);
    let declaration: Value = response.json().await.expect("json");
    assert_eq!(declaration["Type"], declarations::SUBSCRIPTIONS_TYPE);
    assert_eq!(declaration["ServerToken"], configuration["ServerToken"]);

    // Not of that kind, not assigned, or not this enrollment's (DEV-2 has a set of its own,
    // empty): 404.
    s.store
        .withdraw(&["DEV-2".to_string()])
        .expect("an empty set");
    for (path, enrollment) in [
        (format!("declaration/activation/{identifier}"), "DEV-1"),
        (
            "declaration/configuration/ddm.enforce.nothing".to_string(),
            "DEV-1",
        ),
        (format!("declaration/configuration/{identifier}"), "DEV-2"),
    ] {
        assert_eq!(
            get(&s.base, &path, Some(enrollment), None).await.status(),
            404,
            "{path} for {enrollment}"
        );
    }
}

#[tokio::test]
async fn an_assignment_change_moves_the_token_and_the_items() {
    let s = server(None, None).await;
    let before: Value = get(&s.base, "tokens", Some("DEV-1"), None)
        .await
        .json()
        .await
        .expect("json");
    let e = enforcement();
    let a = declarations::activation(&[&e.identifier]);
    s.store
        .apply(
            &[e.clone(), a.clone()],
            &[Assignment {
                enrollment_id: "DEV-1".into(),
                identifiers: vec![e.identifier.clone(), a.identifier.clone()],
            }],
        )
        .expect("apply");
    let after: Value = get(&s.base, "tokens", Some("DEV-1"), None)
        .await
        .json()
        .await
        .expect("json");
    assert_ne!(
        before["SyncTokens"]["DeclarationsToken"],
        after["SyncTokens"]["DeclarationsToken"]
    );
    let items: Value = get(&s.base, "declaration-items", Some("DEV-1"), None)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        items["Declarations"]["Configurations"],
        json!([{"Identifier": e.identifier, "ServerToken": e.server_token}])
    );
    let served: Value = get(
        &s.base,
        &format!("declaration/configuration/{}", e.identifier),
        Some("DEV-1"),
        None,
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(served, serde_json::to_value(&e).expect("json"));
}

#[tokio::test]
async fn requests_without_a_valid_signature_are_refused_and_responses_are_signed() {
    let receive = b"nanomdm-send-key";
    let send = b"nanomdm-recv-key";
    let s = server(Some(receive), Some(send)).await;
    assert_eq!(
        get(&s.base, "tokens", Some("DEV-1"), None).await.status(),
        401
    );
    assert_eq!(
        get(&s.base, "tokens", Some("DEV-1"), Some("not base64!".into()))
            .await
            .status(),
        401
    );
    assert_eq!(
        get(&s.base, "tokens", Some("DEV-1"), Some(sign(b"wrong", b"")))
            .await
            .status(),
        401
    );

    let response = get(&s.base, "tokens", Some("DEV-1"), Some(sign(receive, b""))).await;
    assert_eq!(response.status(), 200);
    let signature = response
        .headers()
        .get("X-Hmac-Signature")
        .and_then(|v| v.to_str().ok())
        .expect("signed response")
        .to_string();
    let body = response.bytes().await.expect("body");
    assert_eq!(signature, sign(send, &body));

    let report = br#"{"StatusItems":{"device":{"model":{"identifier":"iPhone15,2"}}}}"#.to_vec();
    let tampered = put_status(&s.base, "DEV-1", report.clone(), Some(sign(receive, b"{}"))).await;
    assert_eq!(tampered.status(), 401);
    assert!(
        s.store.device_items("DEV-1").expect("read").is_none(),
        "nothing stored from a bad signature"
    );
    let signed = put_status(
        &s.base,
        "DEV-1",
        report.clone(),
        Some(sign(receive, &report)),
    )
    .await;
    assert_eq!(signed.status(), 200);
    assert!(s.store.device_items("DEV-1").expect("read").is_some());
}

#[tokio::test]
async fn hostile_status_reports_get_clear_answers_and_leave_state_intact() {
    let s = server(None, None).await;
    let good = br#"{"StatusItems":{"softwareupdate":{"install-state":"downloading","future-item":{"x":[1,2]}}},"Errors":[]}"#;
    assert_eq!(
        put_status(&s.base, "DEV-1", good.to_vec(), None)
            .await
            .status(),
        200
    );
    let stored = s.store.device_items("DEV-1").expect("read").expect("state");

    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"{not json".to_vec(), 400),
        (b"[]".to_vec(), 400),
        (br#"{"StatusItems": "no"}"#.to_vec(), 400),
        (
            format!(
                "{{\"StatusItems\":{{\"a\":{}1{}}}}}",
                "[".repeat(64),
                "]".repeat(64)
            )
            .into_bytes(),
            400,
        ),
        (vec![b' '; 3 * 1024 * 1024], 413),
    ];
    for (body, expected) in cases {
        let response = put_status(&s.base, "DEV-1", body, None).await;
        assert_eq!(response.status(), expected);
        if expected == 400 {
            let why = response.text().await.expect("reason");
            assert!(why.starts_with("not a status report"), "{why}");
        }
    }
    let missing = reqwest::Client::new()
        .put(format!("{}status", s.base))
        .body(good.to_vec())
        .send()
        .await
        .expect("request");
    assert_eq!(missing.status(), 400, "no X-Enrollment-ID");
    assert_eq!(
        s.store.device_items("DEV-1").expect("read").expect("state"),
        stored,
        "state intact"
    );
    assert_eq!(
        stored["softwareupdate"]["future-item"]["x"],
        json!([1, 2]),
        "unknown items are kept"
    );
}

#[tokio::test]
async fn reports_are_durable_once_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ddm.sqlite");
    {
        let store = Arc::new(Store::open(&path).expect("store"));
        let backend = Embedded::new(store.clone(), None);
        let reports = (0..200).map(|i| {
            let writer = backend.reports.clone();
            async move {
                let raw = format!(
                    r#"{{"StatusItems":{{"softwareupdate":{{"failure-reason":{{"count":{i}}}}}}}}}"#
                );
                let report = ddm_update_operator::status::StatusReport::from_slice(raw.as_bytes())
                    .expect("report");
                writer
                    .record(format!("DEV-{i}"), report, raw.into_bytes())
                    .await
            }
        });
        for result in futures::future::join_all(reports).await {
            result.expect("stored");
        }
        assert_eq!(backend.devices().await.expect("devices").len(), 200);
    }
    let reopened = Store::open(&path).expect("reopen");
    for i in [0, 99, 199] {
        let items = reopened
            .device_items(&format!("DEV-{i}"))
            .expect("read")
            .expect("state");
        assert_eq!(items["softwareupdate"]["failure-reason"]["count"], i);
    }
}
