//! The sync trigger against the NanoMDM fake (tests/it/support/nanomdm.rs, built on NanoMDM's
//! protocol facts): per-id replies, push failures that queue anyway, 207, command errors, one
//! pending command per device, and only enrollments NanoMDM knows.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ddm_update_operator::backend::nanomdm::{
    self, Enqueued, KnownEnrollments, NanoMdmConfig, NanoMdmError, SyncTrigger,
};
use ddm_update_operator::metrics::Metrics;
use futures::future::BoxFuture;

use crate::support::nanomdm::{NanoMdmFake, Options, Push};

const DM: &str = "DeclarativeManagement";

fn config(mdm: &NanoMdmFake) -> NanoMdmConfig {
    let mut config = NanoMdmConfig::new(mdm.url(), mdm.api_key());
    config.debounce = Duration::from_millis(50);
    config.backoff = Duration::from_millis(20);
    config.max_backoff = Duration::from_millis(80);
    config.enqueue_unknown = true;
    config
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Enrollments the webhook reported, set by the test.
#[derive(Default)]
struct Enrolled(Mutex<HashSet<String>>);

impl KnownEnrollments for Enrolled {
    fn enrolled(&self) -> BoxFuture<'_, Result<HashSet<String>, String>> {
        let set = self.0.lock().expect("lock").clone();
        Box::pin(async move { Ok(set) })
    }
}

/// Lets the trigger settle: the debounce plus every retry with its backoff.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(600)).await;
}

fn counter(metrics: &Metrics, series: &str) -> u64 {
    let text = metrics.encode();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn changes_are_debounced_batched_and_authenticated() {
    let mdm = NanoMdmFake::start(Options::default()).await;
    let mut config = config(&mdm);
    config.debounce = Duration::from_millis(200);
    config.batch = 2;
    let trigger = SyncTrigger::start(config, reqwest::Client::new());
    trigger.notify(&ids(&["C", "A"]));
    trigger.notify(&ids(&["B", "A"]));
    assert!(
        mdm.wait_until(|m| m.requests_to("enqueue").len() >= 2)
            .await
    );
    settle().await;
    let requests = mdm.requests_to("enqueue");
    let batches: Vec<Vec<String>> = requests.iter().map(|r| r.ids.clone()).collect();
    assert_eq!(batches, [ids(&["A", "B"]), ids(&["C"])]);
    for request in &requests {
        assert!(request.authorized, "Basic nanomdm:<key>");
        assert_eq!(request.status, 200);
    }
    for id in ["A", "B", "C"] {
        assert_eq!(
            mdm.count(id, DM),
            1,
            "{id}: one command however many changes"
        );
        assert_eq!(mdm.pushes(id), 1);
        assert!(trigger.is_pending(id));
    }
    assert!(mdm.requests_to("push").is_empty());
}

/// The finding: NanoMDM answers 500 `push_error` yet queues, and the trigger enqueued again, so
/// the device found four commands. Now the enqueue is never repeated; only the push is.
#[tokio::test]
async fn push_failures_never_queue_a_second_command() {
    let mdm = NanoMdmFake::start(Options {
        push: Push::NoPushCert,
        ..Options::default()
    })
    .await;
    let metrics = Arc::new(Metrics::new());
    let trigger = SyncTrigger::start_with_metrics(
        config(&mdm),
        reqwest::Client::new(),
        Some(metrics.clone()),
    );
    trigger.notify(&ids(&["DEV"]));
    // One enqueue, then the push alone, tried `attempts` times.
    assert!(mdm.wait_until(|m| m.requests_to("push").len() >= 4).await);
    settle().await;
    assert_eq!(mdm.requests_to("enqueue").len(), 1);
    assert_eq!(mdm.requests_to("enqueue")[0].status, 500);
    assert_eq!(mdm.requests_to("push").len(), 4);
    assert_eq!(mdm.count("DEV", DM), 1, "{:?}", mdm.queue("DEV"));

    // Another change before the device fetched it: push again, still no second command.
    trigger.notify(&ids(&["DEV"]));
    assert!(mdm.wait_until(|m| m.requests_to("push").len() >= 8).await);
    settle().await;
    assert_eq!(mdm.requests_to("enqueue").len(), 1);
    assert_eq!(mdm.count("DEV", DM), 1);

    // The push certificate arrives: the next change's push goes through, and after that a
    // change needs nothing at all until the device fetches the command.
    mdm.set_push(Push::Ok);
    trigger.notify(&ids(&["DEV"]));
    assert!(mdm.wait_until(|m| m.pushes("DEV") == 1).await);
    trigger.notify(&ids(&["DEV"]));
    settle().await;
    assert_eq!(mdm.requests_to("push").len(), 9);
    assert_eq!(mdm.requests_to("enqueue").len(), 1);
    assert_eq!(mdm.count("DEV", DM), 1);

    let commands =
        "ddm_update_operator_nanomdm_commands_total{request_type=\"DeclarativeManagement\"";
    assert_eq!(
        counter(&metrics, &format!("{commands},outcome=\"queued\"}}")),
        1
    );
    assert_eq!(
        counter(&metrics, &format!("{commands},outcome=\"not_queued\"}}")),
        0
    );
    assert_eq!(
        counter(
            &metrics,
            "ddm_update_operator_nanomdm_pushes_total{outcome=\"error\"}"
        ),
        9,
        "the enqueue's push and eight /v1/push"
    );
    assert_eq!(
        counter(
            &metrics,
            "ddm_update_operator_nanomdm_pushes_total{outcome=\"ok\"}"
        ),
        1
    );
    assert_eq!(
        counter(
            &metrics,
            "ddm_update_operator_nanomdm_sync_skipped_total{reason=\"pending\"}"
        ),
        1
    );
    assert_eq!(
        counter(&metrics, "ddm_update_operator_nanomdm_pending_commands"),
        1
    );
    let backend = "ddm_update_operator_backend_requests_total{backend=\"nanomdm\"";
    assert_eq!(
        counter(
            &metrics,
            &format!("{backend},operation=\"push\",outcome=\"error\"}}")
        ),
        8
    );
    assert_eq!(
        counter(
            &metrics,
            &format!("{backend},operation=\"push\",outcome=\"ok\"}}")
        ),
        1
    );
    assert_eq!(
        counter(
            &metrics,
            &format!("{backend},operation=\"enqueue\",outcome=\"partial\"}}")
        ),
        1,
        "queued, not pushed"
    );
}

/// 207: each id is handled by its own result.
#[tokio::test]
async fn a_multi_status_is_handled_per_id() {
    let mdm = NanoMdmFake::start(Options {
        push: Push::FailFor(BTreeSet::from(["B".to_string()])),
        ..Options::default()
    })
    .await;
    mdm.refuse("C", 1, "enrollment not found");
    let trigger = SyncTrigger::start(config(&mdm), reqwest::Client::new());
    trigger.notify(&ids(&["A", "B", "C"]));
    assert!(
        mdm.wait_until(|m| m.requests_to("enqueue").len() >= 2)
            .await
    );
    settle().await;
    let enqueues = mdm.requests_to("enqueue");
    assert_eq!(enqueues.len(), 2, "{enqueues:?}");
    assert_eq!(enqueues[0].status, 207);
    assert_eq!(enqueues[0].ids, ids(&["A", "B", "C"]));
    assert_eq!(enqueues[0].method, "PUT");
    assert_eq!(enqueues[0].query, None, "the trigger wants the push");
    let reply = &enqueues[0].reply;
    assert!(reply["status"]["B"]["push_error"].is_string(), "{reply}");
    assert!(reply["status"]["C"]["command_error"].is_string(), "{reply}");
    assert!(reply["status"]["A"]["push_result"].is_string(), "{reply}");
    // C was not queued: enqueued again, alone. B was queued but not pushed: pushed again.
    assert_eq!(enqueues[1].ids, ids(&["C"]));
    assert_eq!(enqueues[1].status, 200);
    let pushes = mdm.requests_to("push");
    assert!(!pushes.is_empty());
    assert!(pushes.iter().all(|p| p.ids == ids(&["B"])), "{pushes:?}");
    for id in ["A", "B", "C"] {
        assert_eq!(mdm.count(id, DM), 1, "{id}: {:?}", mdm.queue(id));
    }
}

#[tokio::test]
async fn a_command_error_is_retried_with_a_new_command() {
    let mdm = NanoMdmFake::start(Options::default()).await;
    mdm.fail_next_enqueues(2, "storage: database is locked");
    let trigger = SyncTrigger::start(config(&mdm), reqwest::Client::new());
    trigger.notify(&ids(&["DEV"]));
    assert!(
        mdm.wait_until(|m| m.requests_to("enqueue").len() >= 3)
            .await
    );
    settle().await;
    let enqueues = mdm.requests_to("enqueue");
    let statuses: Vec<u16> = enqueues.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 500, 200]);
    assert_ne!(enqueues[0].body, enqueues[2].body, "a new CommandUUID");
    assert_eq!(mdm.count("DEV", DM), 1);
    assert!(trigger.is_pending("DEV"));
}

#[tokio::test]
async fn unknown_enrollments_are_never_enqueued() {
    let mdm = NanoMdmFake::start(Options::default()).await;
    let mut config = config(&mdm);
    config.enqueue_unknown = false;
    let metrics = Arc::new(Metrics::new());
    let trigger =
        SyncTrigger::start_with_metrics(config, reqwest::Client::new(), Some(metrics.clone()));
    // No webhook wired: nothing is known, nothing is sent.
    trigger.notify(&ids(&["A", "B"]));
    settle().await;
    assert!(mdm.requests().is_empty());

    let enrolled = Arc::new(Enrolled::default());
    enrolled.0.lock().expect("lock").insert("A".into());
    trigger.known_from(enrolled.clone());
    trigger.notify(&ids(&["A", "B", "C"]));
    assert!(
        mdm.wait_until(|m| !m.requests_to("enqueue").is_empty())
            .await
    );
    settle().await;
    let enqueues = mdm.requests_to("enqueue");
    assert_eq!(enqueues.len(), 1);
    assert_eq!(enqueues[0].ids, ids(&["A"]));
    assert!(mdm.queue("B").is_empty() && mdm.queue("C").is_empty());
    assert_eq!(
        counter(
            &metrics,
            "ddm_update_operator_nanomdm_sync_skipped_total{reason=\"unknown_enrollment\"}"
        ),
        4
    );
}

/// A device that has not fetched its command gets no second one, however often its set
/// changes; once NanoMDM reports its answer (or it checks in after a push), the next change
/// enqueues again.
#[tokio::test]
async fn repeated_changes_before_the_device_fetches_get_one_command() {
    let mdm = NanoMdmFake::start(Options::default()).await;
    let trigger = SyncTrigger::start(config(&mdm), reqwest::Client::new());
    for _ in 0..3 {
        trigger.notify(&ids(&["DEV"]));
        settle().await;
    }
    assert_eq!(mdm.requests_to("enqueue").len(), 1);
    assert_eq!(mdm.count("DEV", DM), 1);

    // The device polls (Idle), gets the command and acknowledges it; NanoMDM's webhook
    // reports mdm.Connect with its command_uuid.
    let command = mdm.idle("DEV").expect("queued command");
    assert_eq!(command.request_type, DM);
    // NotNow keeps it queued, so it stays pending.
    assert_eq!(mdm.not_now("DEV", &command.command_uuid), None);
    trigger.acknowledged("DEV", &command.command_uuid, "NotNow");
    trigger.acknowledged("DEV", "SOME-OTHER-COMMAND", "Acknowledged");
    assert!(trigger.is_pending("DEV"));
    assert_eq!(mdm.idle("DEV"), Some(command.clone()), "Idle re-delivers");
    assert_eq!(mdm.acknowledge("DEV", &command.command_uuid), None);
    trigger.acknowledged("DEV", &command.command_uuid, "Acknowledged");
    assert!(!trigger.is_pending("DEV"));

    trigger.notify(&ids(&["DEV"]));
    assert!(
        mdm.wait_until(|m| m.requests_to("enqueue").len() == 2)
            .await
    );
    assert_eq!(mdm.count("DEV", DM), 1);

    // Without the webhook: the DDM check-in that the pushed command causes ends pending.
    let second = mdm.idle("DEV").expect("second command");
    mdm.acknowledge("DEV", &second.command_uuid);
    trigger.checked_in("DEV");
    trigger.notify(&ids(&["DEV"]));
    assert!(
        mdm.wait_until(|m| m.requests_to("enqueue").len() == 3)
            .await
    );
    assert_eq!(mdm.count("DEV", DM), 1);
}

#[tokio::test]
async fn the_api_calls_answer_per_id() {
    let mdm = NanoMdmFake::start(Options::default()).await;
    let client = reqwest::Client::new();
    let mut config = config(&mdm);
    let command = nanomdm::command_plist("CMD-1");
    let got = nanomdm::enqueue_command(&client, &config, &ids(&["A", "B"]), command.as_bytes())
        .await
        .expect("reply");
    assert_eq!(got["A"], Enqueued::Queued);
    assert_eq!(got["B"], Enqueued::Queued);
    assert_eq!(mdm.queue("A")[0].command_uuid, "CMD-1");
    assert_eq!(mdm.queue("A")[0].raw, command.as_bytes());

    // The reply shape NanoMDM gave with ?nopush=1 (facts transcript): tab-indented JSON with
    // no_push, command_uuid and request_type, and no status map.
    let response = client
        .post(format!("{}/v1/enqueue/A?nopush=1", mdm.url()))
        .basic_auth("nanomdm", Some(mdm.api_key()))
        .body(nanomdm::command_plist("CMD-2"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    assert!(text.contains("\n\t\"no_push\": true"), "{text}");
    let reply: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        reply,
        serde_json::json!({"no_push": true, "command_uuid": "CMD-2", "request_type": DM})
    );
    assert_eq!(mdm.queue("A").len(), 2);
    assert_eq!(mdm.pushes("A"), 1, "no push with nopush");

    // A command without RequestType: NanoMDM's decoding error, not queued.
    let bad = command.replace("RequestType", "Kind");
    let got = nanomdm::enqueue_command(&client, &config, &ids(&["A"]), bad.as_bytes())
        .await
        .expect("reply");
    assert!(
        matches!(&got["A"], Enqueued::NotQueued { command_error } if command_error.starts_with("decoding command: ")),
        "{got:?}"
    );
    assert_eq!(mdm.queue("A").len(), 2);

    config.api_key = "wrong".into();
    assert_eq!(
        nanomdm::enqueue_command(&client, &config, &ids(&["A"]), command.as_bytes()).await,
        Err(NanoMdmError::Unauthorized)
    );
    assert_eq!(
        nanomdm::push(&client, &config, &ids(&["A"])).await,
        Err(NanoMdmError::Unauthorized)
    );
    // The fake's 401 is NanoMDM's: a Basic challenge.
    let response = client
        .put(format!("{}/v1/enqueue/A", mdm.url()))
        .body(command.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 401);
    assert_eq!(
        response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Basic realm=\"nanomdm\"")
    );
    // Nothing listens: unreachable, never a panic.
    config.api_url = "http://127.0.0.1:9".into();
    assert_eq!(
        nanomdm::enqueue_command(&client, &config, &ids(&["A"]), command.as_bytes()).await,
        Err(NanoMdmError::Unreachable)
    );
}
