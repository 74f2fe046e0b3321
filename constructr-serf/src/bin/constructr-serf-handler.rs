//! `constructr-serf-handler`: the Serf event handler alone (the same as
//! `constructr serf-handler`), for `serf agent -event-handler`.

use clap::Parser;

/// Forwards one Serf event (environment + stdin) to the constructr Serf bridge.
#[derive(Parser)]
#[command(name = "constructr-serf-handler", version, about)]
struct Cli {
    #[command(flatten)]
    args: constructr_serf::handler::HandlerArgs,
}

fn main() -> std::process::ExitCode {
    constructr_serf::handler::main(&Cli::parse().args)
}
