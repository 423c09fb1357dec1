//! `kalam-cli`: the KalamDB terminal client (see `kalamdb_node::cli`).

use clap::Parser;

fn main() {
    let args = kalamdb_node::cli::Args::parse();
    std::process::exit(kalamdb_node::cli::run(args));
}
