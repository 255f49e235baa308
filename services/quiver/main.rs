//! The `quiver` binary: parse, load config, start telemetry, run.

use std::process::ExitCode;

use clap::Parser as _;
use quiver_cli::Cli;

/// The worker allocates many small objects per event; mimalloc serves them faster than glibc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = match quiver_cli::load(&cli) {
        Ok(ctx) => ctx,
        Err(error) => {
            eprintln!("quiver: {error}");
            return ExitCode::from(2);
        }
    };
    if let Err(error) = quiver_cli::init_telemetry(&ctx.config) {
        eprintln!("quiver: {error}");
        return ExitCode::from(2);
    }
    match quiver_cli::run(cli, ctx) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("quiver: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
