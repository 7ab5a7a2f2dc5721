//! The fleet simulation of issue 11 as a measurement: 2,000 devices of real models lived from
//! 2025-09-16 to 2026-08-22 on a virtual clock against the operator's real pass, store and
//! endpoints (see `src/sim/timeline.rs`). Prints the README's table and where the time went.
//! Run with `cargo bench --bench fleet_sim`.
//!
//! The same run with every assertion is `tests/it/fleet_sim.rs`; this one leaves out only the
//! check against Apple's schema files (their validator lives with the tests) and reports any
//! other assertion that failed instead of stopping.

use std::path::Path;

use ddm_update_operator::sim::timeline::{self, Options};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = match timeline::standard_script(root) {
        Ok(script) => script,
        Err(error) => {
            eprintln!("cannot read the script's inputs: {error}");
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start a runtime: {error}");
            std::process::exit(2);
        }
    };
    let options = Options {
        schema: None,
        progress: std::env::var_os("FLEET_SIM_PROGRESS").is_some(),
    };
    match runtime.block_on(timeline::run(script, options)) {
        Ok(outcome) => println!("{outcome}"),
        Err(error) => {
            eprintln!("the run stopped: {error}");
            std::process::exit(1);
        }
    }
}
