//! `ddm-update-operator crds`: the CustomResourceDefinitions as YAML, generated from the types.

use clap::Args;

use super::CliError;

#[derive(Debug, Args)]
pub struct CrdsArgs {
    /// Leave out the CEL validation rules (Kubernetes before 1.25 rejects them).
    #[arg(long)]
    without_cel: bool,
}

pub fn run(args: CrdsArgs) -> Result<String, CliError> {
    crate::api::crds_yaml(!args.without_cel)
        .map_err(|e| CliError::Unreadable(format!("cannot render the CRDs: {e}")))
}
