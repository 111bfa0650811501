//! `adrank config`: the effective configuration.

use std::process::ExitCode;

use crate::config::Loaded;

/// Print the effective configuration.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    match &loaded.file {
        Some(file) => println!("# from {}", file.display()),
        None => println!("# no config file: built-in defaults"),
    }
    for var in &loaded.overrides {
        println!("# overridden by {var}");
    }
    print!("{}", toml::to_string_pretty(&loaded.config)?);
    Ok(ExitCode::SUCCESS)
}
