//! The `augur` binary: a thin command line over the library.
use std::path::PathBuf;

use anyhow::Context;
use augur::runtime::{DeviceSpec, Manifest, Model};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "augur",
    version,
    about = "Real-time inference stream processor for trading signals"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load every model of a model repository, check it, and print what was loaded.
    Models {
        /// The model repository: <root>/<model_id>/<version>/manifest.toml
        #[arg(long, default_value = "models")]
        root: PathBuf,
        /// cpu, cuda, cuda:N or auto
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Models { root, device } => {
            let spec = DeviceSpec::parse(&device).with_context(|| format!("unknown device {device:?}"))?;
            println!("cuda available: {}", tch::Cuda::is_available());
            for dir in Manifest::discover(&root).context("listing the model repository")? {
                let m = Model::load(&dir, spec).with_context(|| format!("loading {}", dir.display()))?;
                let man = m.manifest();
                println!(
                    "{:<16} v{} {:<13} {:<8} window {:>2} x {:>2} {:<9} test accuracy {} (baseline {})",
                    man.id,
                    man.version,
                    format!("{:?}", man.kind),
                    m.device_name(),
                    man.window,
                    man.features,
                    format!("{:?}", man.layout),
                    man.metrics
                        .get("test_accuracy")
                        .map(|v| v.to_string())
                        .unwrap_or_default(),
                    man.metrics
                        .get("baseline_accuracy")
                        .map(|v| v.to_string())
                        .unwrap_or_default(),
                );
            }
        }
    }
    Ok(())
}
