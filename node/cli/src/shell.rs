//! The shell: statements accumulate until a line ends with `;`, meta-commands (`\...`) run at
//! once. The same logic serves the interactive prompt, `-c`, `-f` and piped input.

use std::path::{Path, PathBuf};

use rustyline::DefaultEditor;
use rustyline::config::Configurer;
use rustyline::error::ReadlineError;
use serde_json::Value;

use super::client::{CliError, Client};
use super::render::{Format, render, took};
use super::{EXIT_FAILED, import};

/// Lines of history kept.
pub const HISTORY_LINES_MAX: usize = 10_000;

const HELP: &str = "\
Statements end with ';' and may span lines. Meta-commands:
  \\help, \\?            this help
  \\q, \\quit            exit (or Ctrl-D)
  \\dt [ns]             list tables (of one namespace)
  \\d ns.t              columns of a table
  \\dn                  list namespaces
  \\health              the server's health
  \\cluster             nodes and Raft groups: leader, term, commit index, lag
  \\tail ns.t [filter]  follow a table's changes until Ctrl-C (filter: a WHERE condition)
  \\format table|json|csv   result format
  \\timing              show or hide 'Took: X ms'
  \\copy ns.t FROM 'file.csv'   import a CSV file (first line: column names)
Ctrl-C cancels the statement being typed or running.";

/// What the shell does after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Quit,
}

pub struct Session {
    client: Client,
    format: Format,
    timing: bool,
    rt: tokio::runtime::Runtime,
}

impl Session {
    pub fn new(client: Client, format: Format, timing: bool, rt: tokio::runtime::Runtime) -> Session {
        Session { client, format, timing, rt }
    }

    /// Run text (a file, `-c`, piped input): statements and meta-commands in order. Returns
    /// the exit code; with `stop_on_error`, the first error ends the run.
    pub fn run_text(&mut self, text: &str, stop_on_error: bool) -> i32 {
        let mut buffer = String::new();
        let mut code = 0;
        for line in text.lines() {
            match self.feed(&mut buffer, line) {
                Ok(Flow::Quit) => return code,
                Ok(Flow::Continue) => {}
                Err(e) => {
                    eprintln!("{e}");
                    code = EXIT_FAILED;
                    if stop_on_error {
                        return code;
                    }
                }
            }
        }
        // A last statement without its ';' still runs.
        if !buffer.trim().is_empty()
            && let Err(e) = self.execute(&std::mem::take(&mut buffer))
        {
            eprintln!("{e}");
            code = EXIT_FAILED;
        }
        code
    }

    /// One input line: a meta-command (when no statement is pending), or part of a statement
    /// that runs once a line ends with `;`.
    fn feed(&mut self, buffer: &mut String, line: &str) -> Result<Flow, CliError> {
        let trimmed = line.trim();
        if buffer.trim().is_empty() && trimmed.starts_with('\\') {
            buffer.clear();
            return self.meta(trimmed);
        }
        if trimmed.is_empty() && buffer.is_empty() {
            return Ok(Flow::Continue);
        }
        buffer.push_str(line);
        buffer.push('\n');
        if trimmed.ends_with(';') {
            let sql = std::mem::take(buffer);
            self.execute(&sql)?;
        }
        Ok(Flow::Continue)
    }

    /// Send SQL and print every result. Ctrl-C abandons the request.
    fn execute(&mut self, sql: &str) -> Result<(), CliError> {
        let client = &self.client;
        let answer = self.rt.block_on(async {
            tokio::select! {
                r = client.sql(sql) => r,
                _ = tokio::signal::ctrl_c() => Err(CliError::new(
                    "CANCELLED",
                    "statement cancelled (a write may still have been applied by the server)",
                )),
            }
        })?;
        let (results, took_ms) = answer;
        for r in &results {
            println!("{}", render(r, self.format));
        }
        if self.timing && self.format != Format::Json {
            println!("{}", took(took_ms));
        }
        Ok(())
    }

    fn meta(&mut self, line: &str) -> Result<Flow, CliError> {
        let mut parts = line.splitn(2, char::is_whitespace);
        let cmd = parts.next().unwrap_or_default();
        let arg = parts.next().unwrap_or_default().trim();
        match cmd {
            "\\q" | "\\quit" | "\\exit" => return Ok(Flow::Quit),
            "\\help" | "\\?" | "\\h" => println!("{HELP}"),
            "\\dt" if arg.is_empty() => self.execute("SHOW TABLES")?,
            "\\dt" => self.execute(&format!("SHOW TABLES IN {arg}"))?,
            "\\dn" => self.execute("SHOW NAMESPACES")?,
            "\\d" if !arg.is_empty() => self.execute(&format!("DESCRIBE TABLE {arg}"))?,
            "\\d" => self.execute("SHOW TABLES")?,
            "\\health" => self.health()?,
            "\\cluster" => self.cluster()?,
            "\\tail" if !arg.is_empty() => self.tail(arg)?,
            "\\format" => match Format::parse(arg) {
                Some(f) => {
                    self.format = f;
                    println!("Output format is {}.", f.name());
                }
                None if arg.is_empty() => println!("Output format is {}.", self.format.name()),
                None => {
                    return Err(CliError::new(
                        "INVALID_COMMAND",
                        format!("unknown format '{arg}': table, json or csv"),
                    ));
                }
            },
            "\\timing" => {
                self.timing = !self.timing;
                println!("Timing is {}.", if self.timing { "on" } else { "off" });
            }
            "\\copy" => self.copy(arg)?,
            other => {
                return Err(CliError::new(
                    "INVALID_COMMAND",
                    format!("unknown or incomplete meta-command '{other}' (\\help lists them)"),
                ));
            }
        }
        Ok(Flow::Continue)
    }

    fn health(&mut self) -> Result<(), CliError> {
        let (status, v) = self.rt.block_on(self.client.get("/v1/api/healthcheck"))?;
        println!(
            "{}: {} (version {}, HTTP {status})",
            self.client.base(),
            v["status"].as_str().unwrap_or("unknown"),
            v["version"].as_str().unwrap_or("?")
        );
        if status != 200 {
            return Err(CliError::new("UNHEALTHY", format!("{} answers HTTP {status}", self.client.base())));
        }
        Ok(())
    }

    fn cluster(&mut self) -> Result<(), CliError> {
        let (status, v) = self.rt.block_on(self.client.get("/v1/api/cluster/health"))?;
        let mut nodes = comfy_table::Table::new();
        nodes.load_style(comfy_table::presets::ASCII_FULL_CONDENSED);
        nodes.set_header(["node", "http", "raft", "reachable", "groups led"]);
        for n in v["nodes"].as_array().into_iter().flatten() {
            let me = if n["is_self"].as_bool() == Some(true) { " (this)" } else { "" };
            nodes.add_row([
                format!("{}{me}", n["node_id"]),
                n["http_addr"].as_str().unwrap_or_default().to_string(),
                n["raft_addr"].as_str().unwrap_or_default().to_string(),
                n["reachable"].to_string(),
                n["groups_led"].to_string(),
            ]);
        }
        let mut groups = comfy_table::Table::new();
        groups.load_style(comfy_table::presets::ASCII_FULL_CONDENSED);
        groups.set_header(["group", "leader", "term", "commit", "applied here", "max lag"]);
        for g in v["groups"].as_array().into_iter().flatten() {
            let lag = g["members"].as_array().into_iter().flatten().filter_map(|m| m["lag"].as_u64()).max();
            groups.add_row([
                g["group"].as_str().unwrap_or_default().to_string(),
                g["leader"].to_string(),
                g["term"].to_string(),
                g["commit_index"].to_string(),
                g["applied_index"].to_string(),
                lag.map_or("-".to_string(), |l| l.to_string()),
            ]);
        }
        let name = v["cluster_id"].as_str().map_or_else(|| "single node".to_string(), |c| format!("cluster {c}"));
        println!("{name} ({}): {}", self.client.base(), v["status"].as_str().unwrap_or("?"));
        println!("{nodes}\n{groups}");
        if status != 200 {
            return Err(CliError::new("CLUSTER_UNAVAILABLE", "not every group has a leader"));
        }
        Ok(())
    }

    /// Follow a table until Ctrl-C or the end of the stream.
    fn tail(&mut self, arg: &str) -> Result<(), CliError> {
        let (table, filter) = match arg.split_once(char::is_whitespace) {
            Some((t, f)) => (t, Some(f.trim())),
            None => (arg, None),
        };
        let mut path = format!("/v1/api/tail?table={}", url_component(table));
        if let Some(f) = filter.filter(|f| !f.is_empty()) {
            path.push_str(&format!("&where={}", url_component(f)));
        }
        let client = &self.client;
        self.rt.block_on(async {
            let mut lines = client.stream(&path).await?;
            eprintln!("Following {table} (Ctrl-C to stop)");
            let stop = tokio::signal::ctrl_c();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    line = lines.next() => match line {
                        Some(v) => print_event(&v),
                        None => {
                            eprintln!("The stream ended.");
                            return Ok(());
                        }
                    },
                    _ = &mut stop => return Ok(()),
                }
            }
        })
    }

    /// `\copy ns.t FROM 'file.csv'`.
    fn copy(&mut self, arg: &str) -> Result<(), CliError> {
        let usage = || CliError::new("INVALID_COMMAND", "usage: \\copy ns.t FROM 'file.csv'");
        let (table, rest) = arg.split_once(char::is_whitespace).ok_or_else(usage)?;
        let rest = rest.trim();
        let file = rest
            .strip_prefix("FROM")
            .or_else(|| rest.strip_prefix("from"))
            .ok_or_else(usage)?
            .trim()
            .trim_matches('\'');
        match self.import(table, Path::new(file), super::IMPORT_BATCH_ROWS_DEFAULT) {
            0 => Ok(()),
            _ => Err(CliError::new("IMPORT_FAILED", format!("import of {file} into {table} failed"))),
        }
    }

    pub fn import(&mut self, table: &str, file: &Path, batch_rows: usize) -> i32 {
        match self.rt.block_on(import::import(&self.client, table, file, batch_rows)) {
            Ok(summary) => {
                println!("{summary}");
                0
            }
            Err(e) => {
                eprintln!("{e}");
                EXIT_FAILED
            }
        }
    }

    /// The interactive prompt, with history.
    pub fn interactive(&mut self) -> i32 {
        let mut editor = match DefaultEditor::new() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("ERROR TERMINAL: {e}");
                return EXIT_FAILED;
            }
        };
        let _ = editor.set_max_history_size(HISTORY_LINES_MAX);
        let history = history_path();
        if let Some(h) = &history {
            let _ = editor.load_history(h);
        }
        let who = self.client.user.clone().map_or_else(String::new, |u| format!(" as {u}"));
        println!("Connected to {}{who}. \\help for help, \\q to quit.", self.client.base());
        let mut buffer = String::new();
        loop {
            let prompt = if buffer.trim().is_empty() { "kalam> " } else { "   -> " };
            match editor.readline(prompt) {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = editor.add_history_entry(line.as_str());
                    }
                    match self.feed(&mut buffer, &line) {
                        Ok(Flow::Quit) => break,
                        Ok(Flow::Continue) => {}
                        Err(e) => eprintln!("{e}"),
                    }
                }
                // Ctrl-C: drop the statement being typed.
                Err(ReadlineError::Interrupted) => {
                    buffer.clear();
                }
                Err(ReadlineError::Eof) => break,
                Err(e) => {
                    eprintln!("ERROR TERMINAL: {e}");
                    break;
                }
            }
        }
        if let Some(h) = &history {
            let _ = editor.save_history(h);
        }
        0
    }
}

/// `$KALAM_HISTORY`, else `~/.kalam_history`.
fn history_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KALAM_HISTORY") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kalam_history"))
}

fn print_event(v: &Value) {
    match v["type"].as_str() {
        Some("change") | Some("initial") => {
            let row = if v["row"].is_null() { &v["old_row"] } else { &v["row"] };
            println!(
                "{} {} {} {}",
                v["id"].as_str().unwrap_or("-"),
                v["op"].as_str().unwrap_or("?"),
                v["table"].as_str().unwrap_or("?"),
                if row.is_null() { v["detail"].to_string() } else { row.to_string() }
            );
        }
        Some("overflow") | Some("gone") => eprintln!("{}", v["message"].as_str().unwrap_or_default()),
        _ => {}
    }
}

/// Query-component characters kept as they are: RFC 3986's unreserved set.
const URL_COMPONENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Percent-encode a URL query component for the tail endpoint.
fn url_component(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, URL_COMPONENT).to_string()
}
