//! The integration tests, in one binary so the crate links once.
mod apple_schema;
mod catalog_fetch;
mod catalog_snapshots;
