//! `kalamdb-server`: runs one node. With no arguments it serves 127.0.0.1:8080 with data in
//! `./data`; `--config server.toml` reads a config file; `KALAMDB_*` variables override it.
//! `kalamdb-server restore --from <backup folder> --config server.toml` rebuilds the node from
//! a backup before its first start.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// jemalloc serves every allocation of the server, RocksDB's too (its `malloc` replaces
/// glibc's): glibc's malloc and free were about a sixth of a node's CPU under bulk ingest, in
/// a profile of a 3-node cluster (benches/RESULTS.md, 2026-12-04, session 10).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(name = "kalamdb-server", version, about = "KalamDB server node")]
struct Args {
    /// Path to a TOML config file (see README for keys).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Rebuild this node from a backup written by `BACKUP DATABASE TO '<folder>'`, before the
    /// node first starts. Run it on every node of the new cluster, then start them.
    Restore {
        /// The backup folder, or `s3://bucket/prefix` (reached with the `storage.s3_*` settings).
        #[arg(long)]
        from: PathBuf,
        /// Which backup of the folder (default: the newest, named by its LATEST file).
        #[arg(long)]
        backup: Option<String>,
    },
}

fn run_restore(cfg: &kalamdb_node::Config, from: &std::path::Path, backup: Option<&str>) -> ExitCode {
    let restored = match from.to_str().filter(|t| t.contains("://")) {
        Some(url) => kalamdb_node::backup::restore::restore_from_bucket(cfg, url, backup),
        None => kalamdb_node::backup::restore::restore(cfg, from, backup),
    };
    match restored {
        Ok(r) => {
            println!(
                "restored backup {} into {}: {} group(s), {} file(s)",
                r.backup_id,
                cfg.storage.data_path.display(),
                r.groups.len(),
                r.files
            );
            for (group, index) in &r.groups {
                println!("  {group} at log index {index}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kalamdb-server restore: {e}");
            ExitCode::FAILURE
        }
    }
}

/// glibc malloc arenas the server may create, unless `MALLOC_ARENA_MAX` is set already. glibc's
/// default (8 per core) keeps the memory freed by many threads apart: a node that had taken
/// 10M rows held about 400 MiB with 2 arenas and about 540 MiB without (benches/RESULTS.md).
const MALLOC_ARENAS_MAX: &str = "2";

/// glibc reads `MALLOC_ARENA_MAX` only when the process starts, and setting it with `mallopt`
/// would take unsafe code: run this same binary again with it set (same process id, same
/// arguments). If that fails the server runs on with glibc's default.
#[cfg(target_os = "linux")]
fn limit_malloc_arenas() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("MALLOC_ARENA_MAX", MALLOC_ARENAS_MAX)
        .exec();
    eprintln!(
        "kalamdb-server: cannot re-execute with MALLOC_ARENA_MAX={MALLOC_ARENAS_MAX} ({err}); using glibc's default"
    );
}

#[cfg(not(target_os = "linux"))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let args = Args::parse();
    let cfg = match kalamdb_node::Config::load(args.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kalamdb-server: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Restore { from, backup }) = &args.command {
        return run_restore(&cfg, from, backup.as_deref());
    }
    // Our targets (kalamdb_raft, kalamdb_transport, kalamdb_sql) are the interface; openraft's
    // own info logs (every vote and snapshot chunk) only appear when asked for by name.
    let mut directives = std::env::var("RUST_LOG").unwrap_or_else(|_| cfg.logging.level.clone());
    if !directives.contains("openraft") {
        directives.push_str(",openraft=warn");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.logging.level));
    // Colours only on a terminal: `docker logs` and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).init();
    let armed = kalamdb_projections::failpoint::armed_points();
    if !armed.is_empty() {
        tracing::warn!(?armed, "crash points armed by KALAMDB_FAILPOINTS: this process aborts when it reaches them");
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if cfg.server.worker_threads > 0 {
        builder.worker_threads(cfg.server.worker_threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kalamdb-server: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
    };
    match runtime.block_on(kalamdb_node::run(cfg, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("kalamdb-server: {e}");
            ExitCode::FAILURE
        }
    }
}
