//! What the MDM around the operator (NanoMDM) says about devices: its webhook events, the facts
//! they carry (each with its source and time; a newer fact wins), and the commands the operator
//! asks it to send for what DDM does not report. Pure: parsing and rules, no IO.

pub mod command_results;
pub mod commands;
pub mod facts;
pub mod webhook;

pub use facts::{Enrollment, Fact, MdmDevice, Source};
