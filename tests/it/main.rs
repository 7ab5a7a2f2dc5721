//! The integration tests, in one binary so the crate links once.
