//! `kalam-cli`: the KalamDB terminal client (see the `kalamdb_cli` library).

use clap::Parser;

fn main() {
    let args = kalamdb_cli::Args::parse();
    std::process::exit(kalamdb_cli::run(args));
}
