//! The integration tests, in one binary so the crate links once.
mod apple_schema;
mod catalog_fetch;
mod catalog_snapshots;
mod ddm_http;
mod durability;
mod enroll_gate;
mod fleet_sim;
mod helm_chart;
mod installable;
mod kubernetes;
mod ledger;
mod nanomdm_sync;
mod plan_examples;
mod settings_merge;
mod standalone_e2e;
mod support;
mod validation;
