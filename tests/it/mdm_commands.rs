//! SecurityInfo and DeviceInformation through NanoMDM (issue 13 item 2), end to end on loopback:
//! the operator's command sender enqueues into the NanoMDM fake (tests/it/support/nanomdm.rs),
//! the device's answers come back as NanoMDM's `mdm.Connect` webhook events
//! (tests/it/support/nanomdm_webhook.rs) into the real webhook route and store. A Mac that
//! enrolls gets one SecurityInfo, its answer's `BootstrapTokenRequiredForSoftwareUpdate` is
//! stored as a fact from the MDM at the event's time, nothing more goes out within a day, and
//! a checked-out device gets nothing. Bad reports are ignored and counted, never a panic.
//!
//! Answer shapes: the report plist keys from Apple's `information.security.yaml` /
//! `information.device.yaml` (`CommandUUID`, `Status`, `SecurityInfo`, `QueryResponses`); the
//! acknowledge event as NanoMDM builds it (facts file: `acknowledge_event` `{"ids", "udid",
//! "status", "command_uuid", "raw_payload"}`, every command report incl. Idle).

use std::sync::Arc;

use base64::Engine as _;
use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use ddm_update_operator::backend::nanomdm::NanoMdmConfig;
use ddm_update_operator::backend::nanomdm_commands::{CommandSender, NanoMdmQueue, Round};
use ddm_update_operator::clock::Clock;
use ddm_update_operator::http::webhook::WebhookAuth;
use ddm_update_operator::mdm::Source;
use ddm_update_operator::mdm::commands::{CommandState, Schedule};

use crate::support::nanomdm::{NanoMdmFake, Options, QueuedCommand};
use crate::support::nanomdm_webhook::{
    DeviceFacts, WebhookServer, authenticate_plist, checkin_event, checkout_plist, event, post,
    token_update_plist, webhook_server,
};
use crate::support::process::metric_sum;

fn at(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

const MAC: &str = "00008112-000A1C2E3E08801E";
const GONE: &str = "00008112-000B2D3F4F19912F";

struct Rig {
    mdm: NanoMdmFake,
    hook: WebhookServer,
    sender: CommandSender,
    clock: Clock,
    client: reqwest::Client,
}

async fn rig(start: Timestamp) -> Rig {
    let mdm = NanoMdmFake::start(Options::default()).await;
    let hook = webhook_server(WebhookAuth::Unsigned).await;
    let clock = Clock::manual(start);
    let client = reqwest::Client::new();
    let sender = CommandSender {
        store: hook.store.clone(),
        queue: Arc::new(NanoMdmQueue {
            client: client.clone(),
            config: NanoMdmConfig::new(mdm.url(), mdm.api_key()),
        }),
        schedule: Schedule::default(),
        clock: clock.clone(),
        metrics: hook.metrics.clone(),
    };
    Rig {
        mdm,
        hook,
        sender,
        clock,
        client,
    }
}

impl Rig {
    async fn checkin(&self, topic: &str, udid: &str, when: Timestamp, plist: &[u8]) {
        let body = checkin_event(topic, udid, when, &format!("{topic}-{when}"), plist);
        let (status, text) = post(&self.client, &self.hook.url, body, None).await;
        assert_eq!(status, 200, "{topic}: {text}");
    }

    async fn enroll(&self, udid: &str, when: Timestamp) {
        self.checkin(
            "mdm.Authenticate",
            udid,
            when,
            &authenticate_plist(&DeviceFacts::mac(udid)),
        )
        .await;
        self.checkin(
            "mdm.TokenUpdate",
            udid,
            when + SignedDuration::from_secs(1),
            &token_update_plist(udid),
        )
        .await;
    }

    /// NanoMDM's `mdm.Connect` event for a report plist; the webhook's status and body.
    async fn connect(
        &self,
        udid: &str,
        status: &str,
        command_uuid: &str,
        raw: &[u8],
        when: Timestamp,
    ) -> (u16, String) {
        let inner = json!({
            "ids": {"id": udid, "type": "Device"},
            "udid": udid,
            "status": status,
            "command_uuid": command_uuid,
            "raw_payload": base64::engine::general_purpose::STANDARD.encode(raw),
        });
        let body = event(
            "mdm.Connect",
            when,
            &format!("connect-{command_uuid}-{when}"),
            "acknowledge_event",
            inner,
        );
        post(&self.client, &self.hook.url, body, None).await
    }

    async fn round(&self) -> Round {
        self.sender.round().await.expect("a round")
    }

    fn queued(&self, udid: &str, request_type: &str) -> Vec<QueuedCommand> {
        self.mdm
            .queue(udid)
            .into_iter()
            .filter(|c| c.request_type == request_type)
            .collect()
    }

    /// Enqueue requests NanoMDM received carrying `request_type`.
    fn enqueues_of(&self, request_type: &str) -> usize {
        let needle = format!("<string>{request_type}</string>");
        self.mdm
            .requests_to("enqueue")
            .iter()
            .filter(|r| String::from_utf8_lossy(&r.body).contains(&needle))
            .count()
    }

    /// What the store holds for a device the webhook has told about.
    fn stored(&self, udid: &str) -> ddm_update_operator::mdm::MdmDevice {
        self.hook
            .store
            .mdm_device(udid)
            .expect("read")
            .expect("known")
    }

    fn metric(&self, name: &str, labels: &str) -> f64 {
        let text = self.hook.metrics.encode();
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// A report plist with the keys Apple's schemas name.
fn report(entries: Vec<(&str, plist::Value)>) -> Vec<u8> {
    let dictionary: plist::Dictionary = entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let mut out = Vec::new();
    plist::Value::Dictionary(dictionary)
        .to_writer_xml(&mut out)
        .expect("XML plist");
    out
}

fn security_info_answer(command_uuid: &str, required: plist::Value) -> Vec<u8> {
    let mut info = plist::Dictionary::new();
    info.insert(
        "BootstrapTokenAllowedForAuthentication".into(),
        plist::Value::String("allowed".into()),
    );
    info.insert("BootstrapTokenRequiredForSoftwareUpdate".into(), required);
    info.insert(
        "BootstrapTokenRequiredForKernelExtensionApproval".into(),
        plist::Value::Boolean(true),
    );
    info.insert("FDE_Enabled".into(), plist::Value::Boolean(true));
    info.insert(
        "SystemIntegrityProtectionEnabled".into(),
        plist::Value::Boolean(true),
    );
    report(vec![
        ("CommandUUID", plist::Value::String(command_uuid.into())),
        ("SecurityInfo", plist::Value::Dictionary(info)),
        ("Status", plist::Value::String("Acknowledged".into())),
        ("UDID", plist::Value::String(MAC.into())),
    ])
}

#[tokio::test]
async fn a_mac_gets_security_info_once_a_day_and_its_answer_is_stored() {
    let t0 = at("2026-12-07T10:00:00Z");
    let rig = rig(t0).await;
    rig.enroll(MAC, t0 - SignedDuration::from_mins(10)).await;
    // Another Mac enrolled and left: the MDM no longer manages it.
    rig.enroll(GONE, t0 - SignedDuration::from_mins(20)).await;
    rig.checkin(
        "mdm.CheckOut",
        GONE,
        t0 - SignedDuration::from_mins(15),
        &checkout_plist(GONE),
    )
    .await;

    // The Mac needs SecurityInfo, and DeviceInformation (its supervision is unknown).
    let first = rig.round().await;
    assert_eq!(
        first,
        Round {
            queued: 2,
            not_queued: 0
        }
    );
    let security = rig.queued(MAC, "SecurityInfo");
    assert_eq!(security.len(), 1);
    assert_eq!(rig.queued(MAC, "DeviceInformation").len(), 1);
    assert!(
        rig.mdm.queue(GONE).is_empty(),
        "a checked-out device got {:?}",
        rig.mdm.queue(GONE)
    );
    assert!(
        rig.mdm
            .requests_to("enqueue")
            .iter()
            .all(|r| r.ids == [MAC.to_string()]),
        "only the enrolled Mac is addressed"
    );
    let command_uuid = security[0].command_uuid.clone();
    assert!(command_uuid.starts_with("ddm-update-operator.SecurityInfo."));

    // The device polls, gets the command and answers it; NanoMDM reports the answer.
    let answered_at = at("2026-12-07T10:02:31.123456789Z");
    let (status, text) = rig
        .connect(
            MAC,
            "Acknowledged",
            &command_uuid,
            &security_info_answer(&command_uuid, plist::Value::Boolean(true)),
            answered_at,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    rig.mdm.acknowledge(MAC, &command_uuid);

    let device = rig.stored(MAC);
    let required = device.bootstrap_token_required.expect("the fact is stored");
    assert_eq!(
        (required.value, required.source, required.at),
        (true, Source::Mdm, answered_at)
    );
    assert_eq!(device.apple_silicon.map(|f| f.value), Some(true));
    let records = rig.hook.store.mdm_commands().expect("records");
    let security_record = records
        .iter()
        .find(|r| r.command_uuid == command_uuid)
        .expect("recorded");
    assert_eq!(security_record.state, CommandState::Acknowledged);
    assert_eq!(
        rig.metric(
            "ddm_update_operator_mdm_command_results_total",
            "kind=\"SecurityInfo\",outcome=\"acknowledged\""
        ),
        1.0
    );

    // Within the day: nothing more, though DeviceInformation is still unanswered.
    for minutes in [1, 60, 23 * 60] {
        rig.clock.set(t0 + SignedDuration::from_mins(minutes));
        assert_eq!(rig.round().await, Round::default(), "{minutes} min later");
    }
    assert_eq!(rig.enqueues_of("SecurityInfo"), 1);
    assert_eq!(rig.enqueues_of("DeviceInformation"), 1);

    // A day after: SecurityInfo is refreshed once; the outstanding DeviceInformation is not
    // sent a second time.
    rig.clock.set(t0 + SignedDuration::from_hours(24));
    assert_eq!(
        rig.round().await,
        Round {
            queued: 1,
            not_queued: 0
        }
    );
    assert_eq!(rig.enqueues_of("SecurityInfo"), 2);
    assert_eq!(rig.enqueues_of("DeviceInformation"), 1);
    assert_eq!(rig.queued(MAC, "DeviceInformation").len(), 1);
    assert_eq!(
        rig.metric(
            "ddm_update_operator_mdm_commands_sent_total",
            "kind=\"SecurityInfo\",outcome=\"queued\""
        ),
        2.0
    );
    assert!(rig.mdm.queue(GONE).is_empty());
}

#[tokio::test]
async fn bad_reports_are_ignored_and_counted_never_a_panic() {
    let t0 = at("2026-12-07T10:00:00Z");
    let rig = rig(t0).await;
    rig.enroll(MAC, t0 - SignedDuration::from_mins(10)).await;
    rig.round().await;
    let command_uuid = rig.queued(MAC, "SecurityInfo")[0].command_uuid.clone();

    // raw_payload that is not a plist: the webhook refuses the event (400), nothing learned.
    let (status, _) = rig
        .connect(
            MAC,
            "Acknowledged",
            &command_uuid,
            b"BootstrapTokenRequiredForSoftwareUpdate=true",
            t0 + SignedDuration::from_mins(1),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        metric_sum(
            &rig.hook.metrics.encode(),
            "ddm_update_operator_mdm_command_results_total"
        ),
        0.0
    );

    // A Status of the wrong type: the report is ignored and counted, the command stays
    // outstanding.
    let bad_status = report(vec![
        ("CommandUUID", plist::Value::String(command_uuid.clone())),
        ("Status", plist::Value::Integer(1.into())),
    ]);
    let (status, text) = rig
        .connect(
            MAC,
            "Acknowledged",
            &command_uuid,
            &bad_status,
            t0 + SignedDuration::from_mins(2),
        )
        .await;
    assert!(status < 500, "{status} {text}");
    let outstanding = |rig: &Rig| {
        rig.hook
            .store
            .mdm_commands()
            .expect("records")
            .into_iter()
            .find(|r| r.command_uuid == command_uuid)
            .map(|r| r.state)
    };
    assert_eq!(outstanding(&rig), Some(CommandState::Outstanding));

    // The key of the wrong type (a string where Apple's schema says boolean): left out and
    // counted; the rest of the answer is taken and the command ends.
    let answered = t0 + SignedDuration::from_mins(3);
    let (status, text) = rig
        .connect(
            MAC,
            "Acknowledged",
            &command_uuid,
            &security_info_answer(&command_uuid, plist::Value::String("true".into())),
            answered,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        rig.metric(
            "ddm_update_operator_mdm_command_reports_ignored_total",
            "reason=\"wrong_type\""
        ),
        2.0,
        "the Status and the key"
    );
    let device = rig.stored(MAC);
    assert_eq!(device.bootstrap_token_required, None);
    assert_eq!(
        device.apple_silicon.map(|f| (f.value, f.at)),
        Some((true, answered))
    );
    assert_eq!(outstanding(&rig), Some(CommandState::Acknowledged));
}

/// NanoMDM's webhook event for one answer can arrive twice (the same `mdm.Connect` delivered
/// again, or the device sending its report again): the answer is counted once in
/// `mdm_command_results_total`, a NotNow too, and the facts stay those of the first.
#[tokio::test]
async fn an_answer_delivered_twice_is_counted_once() {
    let t0 = at("2026-12-07T10:00:00Z");
    let rig = rig(t0).await;
    rig.enroll(MAC, t0 - SignedDuration::from_mins(10)).await;
    rig.round().await;
    let security = rig.queued(MAC, "SecurityInfo")[0].command_uuid.clone();
    let information = rig.queued(MAC, "DeviceInformation")[0].command_uuid.clone();
    let answered = t0 + SignedDuration::from_mins(2);
    let answer = security_info_answer(&security, plist::Value::String("true".into()));
    let not_now = report(vec![
        ("CommandUUID", plist::Value::String(information.clone())),
        ("Status", plist::Value::String("NotNow".into())),
        ("UDID", plist::Value::String(MAC.into())),
    ]);
    for _ in 0..2 {
        let (status, text) = rig
            .connect(MAC, "Acknowledged", &security, &answer, answered)
            .await;
        assert_eq!(status, 200, "{text}");
        let (status, text) = rig
            .connect(MAC, "NotNow", &information, &not_now, answered)
            .await;
        assert_eq!(status, 200, "{text}");
    }
    let results = |outcome: &str| {
        rig.metric(
            "ddm_update_operator_mdm_command_results_total",
            &format!("outcome=\"{outcome}\""),
        )
    };
    assert_eq!(results("acknowledged"), 1.0);
    assert_eq!(results("not_now"), 1.0);
    assert_eq!(
        rig.metric(
            "ddm_update_operator_mdm_command_reports_ignored_total",
            "reason=\"wrong_type\""
        ),
        1.0,
        "its key of the wrong type, once"
    );
    let device = rig.stored(MAC);
    assert_eq!(
        device.apple_silicon.map(|f| (f.value, f.at)),
        Some((true, answered))
    );
    // A later NotNow is a new answer; the final Acknowledged too.
    let later = answered + SignedDuration::from_mins(5);
    rig.connect(MAC, "NotNow", &information, &not_now, later)
        .await;
    assert_eq!(results("not_now"), 2.0);
}
