//! The integration tests, in one binary so the crate links once.
mod apple_schema;
mod catalog_fetch;
mod catalog_snapshots;
mod plan_examples;
mod ddm_http;
mod durability;
mod nanomdm_sync;
