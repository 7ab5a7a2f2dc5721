//! NanoMDM's webhook as a source of devices (issue 13 item 1), over HTTP on the device listener
//! with events built as NanoMDM builds them (support::nanomdm_webhook): enrollment makes a
//! device known with its Authenticate facts; a CheckOut withdraws its set at once and a late
//! Authenticate does not bring it back; signatures are checked; malformed bodies, plist bombs
//! and oversized bodies are refused, unknown topics and user channels ignored, all counted;
//! a burst of 10,000 events is applied whole in bounded memory.

use std::time::{Duration, Instant};

use base64::Engine as _;
use ddm_update_operator::backend::embedded::Embedded;
use ddm_update_operator::backend::{Assignment, Backend};
use ddm_update_operator::http::webhook::WebhookAuth;
use ddm_update_operator::mdm::{Enrollment, Source};
use futures::StreamExt as _;
use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use crate::support::nanomdm_webhook::{
    DeviceFacts, authenticate_plist, checkin_event, checkout_plist, event, post,
    set_bootstrap_token_plist, token_update_plist, webhook_server,
};
use crate::support::process::metric_sum;

const KEY: &[u8] = b"webhook-key";
const UDID: &str = "11111111-2222-3333-4444-555555555555";

fn at(seconds: i64) -> Timestamp {
    // A sub-second part like NanoMDM's created_at ("2026-12-07T11:14:52.86478793Z").
    "2026-12-07T11:14:52.86478793Z"
        .parse::<Timestamp>()
        .expect("a time")
        + SignedDuration::from_secs(seconds)
}

/// NanoMDM's `mdm.Authenticate` event for [`UDID`], a Mac ([`DeviceFacts::mac`]), `seconds`
/// after [`at`]'s start.
fn authenticate_event(seconds: i64, event_id: &str) -> Vec<u8> {
    checkin_event(
        "mdm.Authenticate",
        UDID,
        at(seconds),
        event_id,
        &authenticate_plist(&DeviceFacts::mac(UDID)),
    )
}

/// NanoMDM's `mdm.TokenUpdate` event for [`UDID`], `seconds` after [`at`]'s start.
fn token_update_event(seconds: i64, event_id: &str) -> Vec<u8> {
    checkin_event(
        "mdm.TokenUpdate",
        UDID,
        at(seconds),
        event_id,
        &token_update_plist(UDID),
    )
}

/// `webhook_events_total` for one topic and outcome.
fn counted(metrics: &ddm_update_operator::metrics::Metrics, topic: &str, outcome: &str) -> f64 {
    let text = metrics.encode();
    let wanted = format!("topic=\"{topic}\",outcome=\"{outcome}\"");
    text.lines()
        .filter(|l| {
            l.starts_with("ddm_update_operator_webhook_events_total{") && l.contains(&wanted)
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrollment_makes_the_device_known_with_its_authenticate_facts() {
    let mut server = webhook_server(WebhookAuth::Key(KEY.to_vec())).await;
    let client = reqwest::Client::new();
    let authenticate = authenticate_event(0, "15dd6ab21ebb0081");
    let token_update = token_update_event(1, "15dd6ab21ebb0082");
    let escrow = checkin_event(
        "mdm.SetBootstrapToken",
        UDID,
        at(2),
        "15dd6ab21ebb0083",
        &set_bootstrap_token_plist(UDID, Some(b"bootstrap-token-bytes")),
    );
    for body in [authenticate.clone(), token_update, escrow] {
        assert_eq!(post(&client, &server.url, body, Some(KEY)).await.0, 200);
    }
    // NanoMDM may deliver the same event twice: nothing changes.
    let (code, answer) = post(&client, &server.url, authenticate, Some(KEY)).await;
    assert_eq!((code, answer.trim()), (200, "already known"));

    // Through the backend trait, as the pass and the sync trigger read it.
    let devices = Embedded::new(server.store.clone(), None)
        .mdm_devices()
        .await
        .expect("MDM devices");
    assert_eq!(devices.len(), 1, "{devices:?}");
    let known = &devices[0];
    assert_eq!(known.enrollment_id, UDID);
    assert_eq!(known.enrollment, Enrollment::Enrolled { since: at(1) });
    assert_eq!(known.udid.as_deref(), Some(UDID));
    assert_eq!(
        known.enrollment_type,
        Some(ddm_update_operator::inventory::EnrollmentType::Device)
    );
    let fact = |f: &Option<ddm_update_operator::mdm::Fact<String>>| {
        f.as_ref().map(|f| (f.value.clone(), f.source, f.at))
    };
    for (name, stored, said) in [
        ("serial number", &known.serial_number, "C02ZX1ABMD6T"),
        ("model", &known.model, "Mac14,2"),
        ("OS version", &known.os_version, "15.6"),
        ("build version", &known.build_version, "24G84"),
    ] {
        assert_eq!(
            fact(stored),
            Some((said.into(), Source::Mdm, at(0))),
            "{name}"
        );
    }
    assert_eq!(
        known.bootstrap_token_escrowed.as_ref().map(|f| f.value),
        Some(true)
    );
    assert_eq!(counted(&server.metrics, "mdm.Authenticate", "applied"), 1.0);
    assert_eq!(
        counted(&server.metrics, "mdm.Authenticate", "unchanged"),
        1.0
    );
    assert_eq!(counted(&server.metrics, "mdm.TokenUpdate", "applied"), 1.0);
    // Each applied event told the resolver loop.
    for _ in 0..3 {
        assert_eq!(server.learned.recv().await.as_deref(), Some(UDID));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_withdraws_the_set_at_once_and_a_late_authenticate_does_not_resurrect() {
    let server = webhook_server(WebhookAuth::Key(KEY.to_vec())).await;
    let client = reqwest::Client::new();
    // The device holds a set, as a pass gave it.
    let declaration = ddm_update_operator::declarations::activation(&["com.example.configuration"]);
    server
        .store
        .apply(
            std::slice::from_ref(&declaration),
            &[Assignment {
                enrollment_id: UDID.into(),
                identifiers: vec![declaration.identifier.clone()],
            }],
        )
        .expect("assigned");
    let token_update = token_update_event(1, "e1");
    assert_eq!(
        post(&client, &server.url, token_update, Some(KEY)).await.0,
        200
    );
    assert!(
        !server
            .store
            .served_set(UDID)
            .expect("a set")
            .members
            .is_empty()
    );

    let checkout = checkin_event("mdm.CheckOut", UDID, at(10), "e2", &checkout_plist(UDID));
    assert_eq!(post(&client, &server.url, checkout, Some(KEY)).await.0, 200);
    let set = server.store.served_set(UDID).expect("an (empty) set");
    assert!(
        set.members.is_empty(),
        "withdrawn when the CheckOut is answered: {set:?}"
    );
    let left = server.store.mdm_device(UDID).expect("read").expect("known");
    assert_eq!(left.enrollment, Enrollment::CheckedOut { at: at(10) });

    // NanoMDM delivers asynchronously: the Authenticate from before the check-out arrives now.
    let late = authenticate_event(5, "e3");
    assert_eq!(post(&client, &server.url, late, Some(KEY)).await.0, 200);
    let still = server.store.mdm_device(UDID).expect("read").expect("known");
    assert_eq!(
        still.enrollment,
        Enrollment::CheckedOut { at: at(10) },
        "not resurrected"
    );
    assert!(
        server
            .store
            .served_set(UDID)
            .expect("set")
            .members
            .is_empty()
    );

    // A CheckOut for an enrollment never seen, then its earlier enrollment: recorded as left,
    // and no set row is made up for it.
    let other = "22222222-3333-4444-5555-666666666666";
    let checkout = checkin_event("mdm.CheckOut", other, at(20), "e4", &checkout_plist(other));
    assert_eq!(post(&client, &server.url, checkout, Some(KEY)).await.0, 200);
    let earlier = checkin_event(
        "mdm.TokenUpdate",
        other,
        at(19),
        "e5",
        &token_update_plist(other),
    );
    assert_eq!(post(&client, &server.url, earlier, Some(KEY)).await.0, 200);
    let other_device = server
        .store
        .mdm_device(other)
        .expect("read")
        .expect("known");
    assert!(!other_device.enrollment.is_enrolled(), "{other_device:?}");
    assert!(server.store.served_set(other).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_signature_is_refused_and_nothing_is_learned() {
    let server = webhook_server(WebhookAuth::Key(KEY.to_vec())).await;
    let client = reqwest::Client::new();
    let body = token_update_event(0, "e1");
    // Signed with another key, unsigned, a signature that is not base64, and the right
    // signature of another body.
    assert_eq!(
        post(&client, &server.url, body.clone(), Some(b"other-key"))
            .await
            .0,
        401
    );
    assert_eq!(post(&client, &server.url, body.clone(), None).await.0, 401);
    for signature in [
        "not base64!".to_string(),
        crate::support::nanomdm_webhook::sign(KEY, b"{}"),
    ] {
        let answer = client
            .post(&server.url)
            .header("x-hmac-signature", signature)
            .body(body.clone())
            .send()
            .await
            .expect("an answer");
        assert_eq!(answer.status().as_u16(), 401);
    }
    assert!(
        server.store.mdm_devices().expect("read").is_empty(),
        "nothing learned"
    );
    assert_eq!(counted(&server.metrics, "unread", "refused"), 4.0);
    // The right key: taken.
    assert_eq!(post(&client, &server.url, body, Some(KEY)).await.0, 200);
    assert_eq!(server.store.mdm_devices().expect("read").len(), 1);

    // No webhook key while DDM requests are authenticated: refused even when unsigned.
    let keyless = webhook_server(WebhookAuth::new(None, true)).await;
    let body = token_update_event(0, "e1");
    let (code, why) = post(&client, &keyless.url, body, None).await;
    assert_eq!(code, 401);
    assert!(why.contains("--webhook-hmac-key-file"), "{why}");
    assert!(keyless.store.mdm_devices().expect("read").is_empty());
    assert_eq!(
        metric_sum(&keyless.metrics.encode(), "ddm_update_operator_insecure"),
        0.0,
        "refusing is not insecure"
    );
    let open = webhook_server(WebhookAuth::new(None, false)).await;
    assert!(
        open.metrics
            .encode()
            .contains("ddm_update_operator_insecure{setting=\"webhook_no_hmac\"} 1"),
        "unsigned events taken: said in a metric"
    );
}

/// A binary plist: a top dictionary whose `Bomb` array references one object `uses` times.
/// Written by hand (bplist00: header, objects, offset table, trailer), so the object is stored
/// once however often it is used.
fn binary_plist_bomb(shared: plist::Value, uses: usize) -> Vec<u8> {
    // Objects: 0 top dict, 1 key "MessageType", 2 "CheckOut", 3 key "Bomb", 4 the array,
    // 5 the shared object.
    let mut shared_bytes = Vec::new();
    plist::Value::Array(vec![shared])
        .to_writer_binary(&mut shared_bytes)
        .expect("binary");
    // Reuse the plist crate's encoding of the shared object: the second object of that file.
    let shared_object = extract_second_object(&shared_bytes);
    let ref_size = 2usize; // up to 65,535 objects
    let mut out = b"bplist00".to_vec();
    let mut offsets = Vec::new();
    let ascii = |s: &str| {
        let mut o = vec![0x50 | s.len() as u8];
        o.extend_from_slice(s.as_bytes());
        o
    };
    let refs = |ids: &[u16]| {
        ids.iter()
            .flat_map(|i| i.to_be_bytes())
            .collect::<Vec<u8>>()
    };
    // 0: dict of 2
    offsets.push(out.len());
    out.push(0xD2);
    out.extend(refs(&[1, 3, 2, 4]));
    offsets.push(out.len());
    out.extend(ascii("MessageType"));
    offsets.push(out.len());
    out.extend(ascii("CheckOut"));
    offsets.push(out.len());
    out.extend(ascii("Bomb"));
    // 4: array of `uses` references to object 5 (length as an int marker after 0xAF).
    offsets.push(out.len());
    out.push(0xAF);
    out.push(0x12); // a 4-byte int follows
    out.extend((uses as u32).to_be_bytes());
    out.extend(refs(&vec![5u16; uses]));
    offsets.push(out.len());
    out.extend(shared_object);
    let table = out.len();
    for offset in &offsets {
        out.extend((*offset as u32).to_be_bytes());
    }
    // Trailer: 6 unused, offset int size, ref size, object count, top object, table offset.
    out.extend([0u8; 6]);
    out.push(4);
    out.push(ref_size as u8);
    out.extend((offsets.len() as u64).to_be_bytes());
    out.extend(0u64.to_be_bytes());
    out.extend((table as u64).to_be_bytes());
    out
}

/// The encoding of `value` in a binary plist the plist crate wrote for `[value]`: of its two
/// objects, the one that is not the array.
fn extract_second_object(bytes: &[u8]) -> Vec<u8> {
    let trailer = &bytes[bytes.len() - 32..];
    let offset_size = trailer[6] as usize;
    let count = u64::from_be_bytes(trailer[8..16].try_into().expect("8 bytes")) as usize;
    let table = u64::from_be_bytes(trailer[24..32].try_into().expect("8 bytes")) as usize;
    assert_eq!(count, 2, "[value] is two objects");
    let offset = |i: usize| {
        let at = table + i * offset_size;
        bytes[at..at + offset_size]
            .iter()
            .fold(0usize, |acc, b| acc << 8 | *b as usize)
    };
    let mut starts = [offset(0), offset(1)];
    starts.sort_unstable();
    let ranges = [(starts[0], starts[1]), (starts[1], table)];
    let (start, end) = ranges
        .into_iter()
        .find(|(start, _)| bytes[*start] >> 4 != 0xA)
        .expect("a non-array object");
    bytes[start..end].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_bombs_and_oversized_bodies_are_refused_and_counted() {
    let server = webhook_server(WebhookAuth::Key(KEY.to_vec())).await;
    let client = reqwest::Client::new();
    let checkin = |raw_payload: serde_json::Value| {
        event(
            "mdm.CheckOut",
            at(0),
            "e",
            "checkin_event",
            json!({"ids": {"id": UDID, "type": "Device"}, "udid": UDID, "raw_payload": raw_payload}),
        )
    };
    let b64 = |bytes: &[u8]| json!(base64::engine::general_purpose::STANDARD.encode(bytes));
    // Strings: 64 KiB, used 4,096 times (256 MiB expanded); an integer used 60,000 times
    // (the element budget).
    let string_bomb = binary_plist_bomb(plist::Value::String("x".repeat(64 * 1024)), 4096);
    let element_bomb = binary_plist_bomb(plist::Value::Integer(7.into()), 60_000);
    assert!(string_bomb.len() < 80 * 1024, "{}", string_bomb.len());
    let deep = format!(
        "<?xml version=\"1.0\"?><plist version=\"1.0\"><dict><key>D</key>{}{}</dict></plist>",
        "<array>".repeat(100),
        "</array>".repeat(100)
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"{\"topic\": \"mdm.CheckOut\", ".to_vec()),
        ("JSON of another shape", b"[1, 2, 3]".to_vec()),
        (
            "no created_at",
            br#"{"topic":"mdm.CheckOut","checkin_event":{"ids":{"id":"A","type":"Device"}}}"#
                .to_vec(),
        ),
        (
            "a check-in topic with an acknowledge event",
            event(
                "mdm.CheckOut",
                at(0),
                "e",
                "acknowledge_event",
                json!({"ids": {"id": UDID, "type": "Device"}, "status": "Idle"}),
            ),
        ),
        ("raw_payload not base64", checkin(json!("%%% not base64"))),
        (
            "raw_payload not a plist",
            checkin(b64(b"this is not a property list")),
        ),
        ("raw_payload missing", checkin(json!(null))),
        ("a plist bomb of strings", checkin(b64(&string_bomb))),
        ("a plist bomb of elements", checkin(b64(&element_bomb))),
        ("nested 100 deep", checkin(b64(deep.as_bytes()))),
    ];
    for (case, body) in cases {
        let (code, why) = post(&client, &server.url, body, Some(KEY)).await;
        assert_eq!(code, 400, "{case}: {why}");
    }
    assert_eq!(counted(&server.metrics, "unread", "malformed"), 10.0);
    // Over the body cap: 413, before the signature is even checked.
    let huge = checkin(json!("A".repeat(1024 * 1024 + 1)));
    assert_eq!(post(&client, &server.url, huge, Some(KEY)).await.0, 413);
    assert!(server.store.mdm_devices().expect("read").is_empty());
    // Still serving.
    let fine = checkin_event("mdm.CheckOut", UDID, at(1), "e9", &checkout_plist(UDID));
    assert_eq!(post(&client, &server.url, fine, Some(KEY)).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topics_user_channels_and_topics_without_device_facts_are_ignored_and_counted() {
    let server = webhook_server(WebhookAuth::Key(KEY.to_vec())).await;
    let client = reqwest::Client::new();
    let plist = token_update_plist(UDID);
    let payload = base64::engine::general_purpose::STANDARD.encode(&plist);
    let user = |kind: &str, parent: Option<&str>| {
        let mut ids = json!({"id": format!("{UDID}:501"), "type": kind});
        if let Some(parent) = parent {
            ids["parent_id"] = json!(parent);
        }
        event(
            "mdm.TokenUpdate",
            at(0),
            "e",
            "checkin_event",
            json!({"ids": ids, "raw_payload": payload}),
        )
    };
    let bodies = [
        checkin_event("mdm.Reticulate", UDID, at(0), "e1", &plist),
        user("User", Some(UDID)),
        user("Shared iPad", Some(UDID)),
        user("User Enrollment", None),
        checkin_event("mdm.DeclarativeManagement", UDID, at(0), "e2", &plist),
    ];
    for body in bodies {
        assert_eq!(
            post(&client, &server.url, body, Some(KEY)).await,
            (200, "ignored\n".into())
        );
    }
    assert_eq!(counted(&server.metrics, "unknown", "ignored"), 1.0);
    assert_eq!(counted(&server.metrics, "mdm.TokenUpdate", "ignored"), 3.0);
    assert_eq!(
        counted(&server.metrics, "mdm.DeclarativeManagement", "ignored"),
        1.0
    );
    assert!(server.store.mdm_devices().expect("read").is_empty());
}

/// This process's resident set now and at its peak, in KiB (Linux).
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_in_a_burst_are_all_applied_in_bounded_memory() {
    const DEVICES: usize = 5_000;
    let server = webhook_server(WebhookAuth::Key(KEY.to_vec())).await;
    let client = reqwest::Client::new();
    // Authenticate then TokenUpdate for 5,000 Macs: 10,000 events, built before measuring.
    let mut bodies = Vec::with_capacity(DEVICES * 2);
    for i in 0..DEVICES {
        let udid = format!("00008112-{i:016X}");
        let device = DeviceFacts {
            serial: format!("C02{i:09}"),
            ..DeviceFacts::mac(&udid)
        };
        let base = i64::try_from(i).expect("small");
        bodies.push(checkin_event(
            "mdm.Authenticate",
            &udid,
            at(base),
            &format!("a{i}"),
            &authenticate_plist(&device),
        ));
        bodies.push(checkin_event(
            "mdm.TokenUpdate",
            &udid,
            at(base + 1),
            &format!("t{i}"),
            &token_update_plist(&udid),
        ));
    }
    let (rss_before, _) = rss_kib();
    let started = Instant::now();
    // 64 at a time, as NanoMDM's goroutines would post them; each device's two events in order.
    let mut pending = futures::stream::iter(bodies.chunks(2).map(|pair| {
        let (client, url, pair) = (client.clone(), server.url.clone(), pair.to_vec());
        async move {
            let mut codes = Vec::new();
            for body in pair {
                codes.push(post(&client, &url, body, Some(KEY)).await.0);
            }
            codes
        }
    }))
    .buffer_unordered(64);
    let mut ok = 0usize;
    while let Some(codes) = pending.next().await {
        ok += codes.iter().filter(|c| **c == 200).count();
    }
    let elapsed = started.elapsed();
    let (rss_after, peak) = rss_kib();
    assert_eq!(ok, DEVICES * 2, "every event answered 200");
    assert_eq!(
        counted(&server.metrics, "mdm.Authenticate", "applied"),
        DEVICES as f64
    );
    assert_eq!(
        counted(&server.metrics, "mdm.TokenUpdate", "applied"),
        DEVICES as f64
    );
    let devices = server.store.mdm_devices().expect("read");
    assert_eq!(devices.len(), DEVICES);
    assert!(
        devices
            .iter()
            .all(|d| d.enrollment.is_enrolled() && d.model.is_some())
    );
    let bytes = server.store.mdm_bytes().expect("size");
    let per_device = bytes / DEVICES as i64;
    eprintln!(
        "10,000 webhook events: {:.1} s ({:.0}/s), store rows {} KiB ({per_device} B per device), RSS {} → {} MiB (peak {} MiB)",
        elapsed.as_secs_f64(),
        (DEVICES * 2) as f64 / elapsed.as_secs_f64(),
        bytes / 1024,
        rss_before / 1024,
        rss_after / 1024,
        peak / 1024,
    );
    assert!(per_device < 2048, "{per_device} bytes per device");
    // Bounded: the burst adds no more than its events' worth in flight (64 at a time) plus
    // SQLite's page cache; other tests share this process, so the bound is loose.
    assert!(
        rss_after.saturating_sub(rss_before) < 256 * 1024,
        "RSS grew {} MiB",
        rss_after.saturating_sub(rss_before) / 1024
    );
    assert!(elapsed < Duration::from_secs(120), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gates_software_update_device_id_joins_the_device_the_webhook_names() {
    use ddm_update_operator::http::enroll::EnrollConfig;
    let server = webhook_server(WebhookAuth::Key(KEY.to_vec())).await;
    // The enrollment gate over the same store, taking plain MachineInfo (a proxy verified it).
    let (_gate, view) = tokio::sync::watch::channel(std::sync::Arc::new(
        ddm_update_operator::enroll::GateView::unavailable("no pass in this test"),
    ));
    let metrics = std::sync::Arc::new(ddm_update_operator::metrics::Metrics::new());
    let config = EnrollConfig {
        allow_unsigned: true,
        ..EnrollConfig::default()
    };
    let mut state = config
        .state(view, Default::default(), metrics)
        .expect("gate state");
    state.device_ids = Some(server.store.clone());
    let router = ddm_update_operator::http::enroll::router("/enroll", std::sync::Arc::new(state));
    // Apple's MachineInfo keys (other/machineinfo.yaml) of a Mac on macOS 14.5.
    let mut info = plist::Dictionary::new();
    for (key, value) in [
        ("UDID", UDID),
        ("SERIAL", "C02ZX1ABMD6T"),
        ("PRODUCT", "Mac14,2"),
        ("VERSION", "23F79"),
        ("OS_VERSION", "14.5"),
        ("SOFTWARE_UPDATE_DEVICE_ID", "J413AP"),
    ] {
        info.insert(key.into(), plist::Value::String(value.into()));
    }
    let mut body = Vec::new();
    plist::Value::Dictionary(info)
        .to_writer_xml(&mut body)
        .expect("plist");
    let (address, _serving) =
        crate::support::ddm::serve_device(router, server.metrics.clone()).await;
    let client = reqwest::Client::new();
    let answer = client
        .post(format!("http://{address}/enroll"))
        .header("content-type", "application/x-apple-aspen-deviceinfo")
        .body(body)
        .send()
        .await
        .expect("answered");
    // No pass yet: the gate cannot decide, but the device id is a fact all the same.
    assert_eq!(answer.status().as_u16(), 503);
    let token_update = token_update_event(0, "e1");
    assert_eq!(
        post(&client, &server.url, token_update, Some(KEY)).await.0,
        200
    );
    let mut known = None;
    for _ in 0..100 {
        known = server
            .store
            .mdm_devices()
            .expect("read")
            .into_iter()
            .next()
            .and_then(|d| d.software_update_device_id);
        if known.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let known = known.expect("the gate's device id joined the MDM device");
    assert_eq!(
        (known.value.as_str(), known.source),
        ("J413AP", Source::MachineInfo)
    );
}
