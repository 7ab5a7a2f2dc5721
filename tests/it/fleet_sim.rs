//! Issue 11's acceptance run: 2,000 devices of real models lived from 2025-09-16 to 2026-08-22
//! on a virtual clock against the operator's real pass, store and endpoints, switching Apple's
//! catalog at the real snapshot dates, with an empty answer and policy edits on the way (see
//! `src/sim/timeline.rs` for what is simulated and asserted at every tick).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ddm_update_operator::sim::timeline::{self, Options, SchemaCheck};

use crate::apple_schema::{self, Target};

/// CI runs the debug build on two cores.
const BUDGET: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_lives_through_eleven_months_of_apple_catalogs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = timeline::standard_script(root).expect("the standard script");
    let schema: SchemaCheck = Arc::new(|declaration, target| {
        apple_schema::validate(
            declaration,
            &Target {
                os: target.os,
                os_version: &target.os_version,
                enrollment: target.enrollment,
            },
        )
    });
    let options = Options {
        schema: Some(schema),
        progress: std::env::var_os("FLEET_SIM_PROGRESS").is_some(),
    };
    let outcome = timeline::run(script, options).await.expect("the run");
    eprintln!("{outcome}");

    assert!(outcome.devices >= 2_000, "{outcome}");
    assert!(outcome.days >= 340, "{outcome}");
    // Not vacuous: rollouts came due, devices installed, the empty answer was refused.
    assert!(outcome.rollouts_due > 1_000, "{outcome}");
    assert!(outcome.installs > 1_000, "{outcome}");
    assert_eq!(outcome.catalog_refusals, 1, "{outcome}");
    assert_eq!(outcome.edits.len(), 4, "{outcome}");
    assert!(outcome.failures.is_empty(), "{outcome}");
    assert!(
        outcome.wall < BUDGET,
        "took {:?} (budget {BUDGET:?})",
        outcome.wall
    );
}
