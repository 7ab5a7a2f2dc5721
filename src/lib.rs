//! ddm-update-operator: keeps fleets of Apple devices on the right OS version through
//! Declarative Device Management, driven by resources committed to Git.

pub mod api;
pub mod backend;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod controller;
pub mod declarations;
pub mod enroll;
pub mod http;
pub mod inventory;
pub mod logging;
pub mod manifests;
pub mod mdm;
pub mod metrics;
pub mod operator;
pub mod pass;
pub mod resolve;
pub mod run;
pub mod sim;
pub mod status;
pub mod strict;
#[cfg(test)]
mod test_support;
pub mod view;
