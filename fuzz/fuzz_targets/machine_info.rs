//! Fuzzes what the enrollment gate reads from a device: the CMS envelope, the MachineInfo plist
//! inside it (XML or binary), the signer's chain to Apple Root CA and the decision taken on
//! whatever parses. Nothing may panic, and a plist bomb must stop at the parser's budget.
#![no_main]

use std::sync::{Arc, LazyLock};

use ddm_update_operator::catalog::Catalog;
use ddm_update_operator::enroll::{Anchors, Envelope, GateView, Trust, decide, read};
use libfuzzer_sys::fuzz_target;

static VIEW: LazyLock<GateView> = LazyLock::new(|| {
    let checked = ddm_update_operator::manifests::check_str(
        "fuzz.yaml",
        r#"
apiVersion: updates.ddm.dev/v1alpha1
kind: FleetGroup
metadata: {name: all, namespace: fuzz}
spec: {}
---
apiVersion: updates.ddm.dev/v1alpha1
kind: UpdatePolicy
metadata: {name: latest, namespace: fuzz}
spec:
  fleetGroups: [all]
  target: {strategy: latest, securityImprovements: true}
  deadline: {daysAfterPosting: 7}
  enrollment: {minimumVersion: Target, failurePolicy: Closed}
"#,
    )
    .expect("the fuzz manifests are valid");
    let catalog = Catalog::from_slice(ddm_update_operator::operator::SHIPPED_CATALOG)
        .expect("the shipped catalog parses");
    GateView::new(
        &checked.groups,
        &checked.policies,
        Arc::default(),
        Ok(Arc::new(catalog)),
    )
});

/// The default roots: a signed envelope's certificates go through the chain check.
static APPLE: LazyLock<Trust> = LazyLock::new(|| Trust::Signed(Anchors::apple()));

fuzz_target!(|data: &[u8]| {
    let now = rustls_pki_types::UnixTime::now();
    for envelope in [Envelope::Plain, Envelope::Signed] {
        // Unsigned allowed: the plist parser sees every input; and Apple's roots.
        for trust in [&Trust::Unsigned, &*APPLE] {
            if let Ok(info) = read(data, envelope, trust, now) {
                let _ = decide(&VIEW, &info, jiff::Timestamp::now());
            }
        }
    }
});
