use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    ddm_update_operator::cli::main(ddm_update_operator::cli::Cli::parse())
}
