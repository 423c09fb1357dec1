//! `kalam-cli`: the terminal client. An interactive SQL shell (line editing and history,
//! multi-line statements ending with `;`, meta-commands such as `\dt` and `\tail`), one-shot
//! `-c` and `-f` runs with a non-zero exit code on error, and `import` of CSV files.

mod client;
mod import;
mod render;
mod shell;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

pub use client::{CliError, Client};
pub use render::Format;

/// Exit code of a statement or command that failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit code when the server cannot be reached or the arguments are wrong.
pub const EXIT_UNAVAILABLE: i32 = 2;
/// Rows per INSERT statement of an import.
pub const IMPORT_BATCH_ROWS_DEFAULT: usize = 1000;
/// Largest batch an import may send in one statement (the server's per-statement cap).
pub const IMPORT_BATCH_ROWS_MAX: usize = 100_000;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum FormatArg {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Parser)]
#[command(
    name = "kalam-cli",
    version,
    about = "The KalamDB terminal client: SQL shell, one-shot commands and CSV import"
)]
pub struct Args {
    /// Server URL (any node of a cluster).
    #[arg(short = 'u', long = "url", default_value = "http://127.0.0.1:8080", env = "KALAM_URL")]
    pub url: String,
    /// User name; with --password (prompted when given without a value).
    #[arg(long, env = "KALAM_USER")]
    pub user: Option<String>,
    #[arg(long, num_args = 0..=1, env = "KALAM_PASSWORD")]
    pub password: Option<Option<String>>,
    /// An access token from /v1/api/auth/login instead of a user and password.
    #[arg(long, env = "KALAM_TOKEN")]
    pub token: Option<String>,
    /// Output of query results.
    #[arg(long, value_enum, default_value = "table")]
    pub format: FormatArg,
    /// Run one command (SQL or a meta-command) and exit.
    #[arg(short = 'c', long = "command", conflicts_with = "file")]
    pub command: Option<String>,
    /// Run the statements of a file and exit (stops at the first error).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Do not print `Took: X ms` after results.
    #[arg(long)]
    pub no_timing: bool,
    #[command(subcommand)]
    pub action: Option<Action>,
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Load a CSV file (first line: column names) into a table, in batches.
    Import {
        /// The table, `ns.t`.
        table: String,
        file: PathBuf,
        #[arg(long, default_value_t = IMPORT_BATCH_ROWS_DEFAULT)]
        batch_rows: usize,
    },
}

/// Run the CLI; returns the process exit code.
pub fn run(args: Args) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ERROR RUNTIME: {e}");
            return EXIT_UNAVAILABLE;
        }
    };
    let format = match args.format {
        FormatArg::Table => Format::Table,
        FormatArg::Json => Format::Json,
        FormatArg::Csv => Format::Csv,
    };
    let client = match rt.block_on(connect(&args)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_UNAVAILABLE;
        }
    };
    let mut session = shell::Session::new(client, format, !args.no_timing, rt);
    if let Some(Action::Import { table, file, batch_rows }) = &args.action {
        return session.import(table, file, *batch_rows);
    }
    if let Some(cmd) = &args.command {
        return session.run_text(cmd, true);
    }
    if let Some(path) = &args.file {
        return match std::fs::read_to_string(path) {
            Ok(text) => session.run_text(&text, true),
            Err(e) => {
                eprintln!("ERROR FILE: cannot read {}: {e}", path.display());
                EXIT_FAILED
            }
        };
    }
    if std::io::stdin().is_terminal() {
        session.interactive()
    } else {
        // Piped input: statements and meta-commands from stdin, stopping at the first error.
        let mut text = String::new();
        if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut text) {
            eprintln!("ERROR STDIN: {e}");
            return EXIT_FAILED;
        }
        session.run_text(&text, true)
    }
}

/// Resolve the URL and credentials: a token as given, a login for --user, else root with an
/// empty password on a loopback URL (allowed while root has no password), else anonymous.
async fn connect(args: &Args) -> Result<Client, CliError> {
    let url = if args.url.contains("://") { args.url.clone() } else { format!("http://{}", args.url) };
    let url = url.trim_end_matches('/').to_string();
    let mut client = Client::new(&url)?;
    if let Some(t) = &args.token {
        client.set_token(t.clone());
        return Ok(client);
    }
    if let Some(user) = &args.user {
        let password = match &args.password {
            Some(Some(p)) => p.clone(),
            Some(None) => prompt_password(user)?,
            None if std::io::stdin().is_terminal() => prompt_password(user)?,
            None => String::new(),
        };
        client.login(user, &password).await?;
        return Ok(client);
    }
    if client.is_loopback() {
        // Best effort: a server with a root password (or none at all) answers 401 here.
        let _ = client.login("root", "").await;
    }
    Ok(client)
}

fn prompt_password(user: &str) -> Result<String, CliError> {
    rpassword::prompt_password(format!("Password for {user}: "))
        .map_err(|e| CliError::new("PASSWORD", format!("cannot read the password: {e}")))
}
