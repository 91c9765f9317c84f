//! Command line: parses arguments and hands off to the library. Exit codes: 0 success,
//! 1 a failure at run time (or `verify` found problems), 2 bad arguments, 64 a bad config
//! file (nothing was started).

use crate::buffer::Buffer;
use crate::config::{self, AgentConfig, ConfigKind, ReceiverConfig};
use crate::envelope::{self, keys, Envelope, Header, Kind};
use crate::redact::{Counts, Redactor};
use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

pub const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "logveil",
    version,
    about = "Host log shipping that keeps PII on the host"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write an Ed25519 key pair: DIR/agent.key (0600) and DIR/agent.pub (`--name store`
    /// for the central store's ledger key: store.key and store.pub). With --pseudonym,
    /// write the fleet's HMAC key for `hash` masking instead: DIR/pseudonym.key (0600).
    /// With --compliance, write the compliance X25519 key pair that legal-exception fields
    /// are sealed to: DIR/compliance.key (0600, for the compliance role only) and
    /// DIR/compliance.pub (for the agents' `redact.compliance_key`).
    Keygen {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "agent")]
        name: String,
        #[arg(long, conflicts_with = "compliance")]
        pseudonym: bool,
        #[arg(long)]
        compliance: bool,
    },
    /// Open the sealed fields of legal-stream records (compliance role). Reads
    /// `archive cat` / `archive search` JSON lines from FILE or stdin and prints each
    /// legal-stream record with `sealed` replaced by `revealed` (`{field path: value}`),
    /// one JSON object per line. Records of other streams are skipped. A record the key
    /// cannot open is named on stderr (host, path, offset) and the exit status is 1.
    Reveal {
        /// The compliance secret key (compliance.key).
        #[arg(long)]
        key: PathBuf,
        /// Input file of JSON lines; stdin when absent.
        #[arg(long = "in")]
        input: Option<PathBuf>,
    },
    /// Run the agent: tail, redact, buffer, ship.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the central store.
    Receive {
        #[arg(long)]
        config: PathBuf,
    },
    /// Check a config file (agent or central store) and exit.
    Validate {
        #[arg(long)]
        config: PathBuf,
    },
    /// Redact lines from FILE (or stdin) to stdout with the agent's rules (built-ins
    /// without --config). One output line per input line.
    Redact {
        #[arg(long)]
        config: Option<PathBuf>,
        /// How each line is read: plain text, JSON, logfmt, or detected per line.
        #[arg(long, value_enum, default_value = "auto")]
        format: FormatArg,
        /// Write, per line, which rule matched which type at which byte span (never the
        /// value) to stderr, or to the given file.
        #[arg(long, num_args = 0..=1, default_missing_value = "-")]
        explain: Option<PathBuf>,
        /// Input file; stdin when absent.
        file: Option<PathBuf>,
    },
    /// Verify an archive: signatures, payload hashes, sequences and hash chains, and the
    /// custody ledger and its agreement with the archive.
    Verify {
        /// The archive directory (filesystem archive).
        #[arg(long, required_unless_present = "s3")]
        archive: Option<PathBuf>,
        /// Verify the S3 archive of this central store config file (its `[receiver.s3]`):
        /// every object version is listed, so a delete marker cannot hide a batch.
        #[arg(long, conflicts_with_all = ["archive", "record_with"])]
        s3: Option<PathBuf>,
        /// With --s3: a custody ledger file (`.custody/ledger.jsonl`) of a store instance
        /// writing to the bucket; repeat for each instance. Default: the config's
        /// `archive_dir` ledger.
        #[arg(long, requires = "s3")]
        ledger: Vec<PathBuf>,
        /// The trusted keys directory (hosts' public keys).
        #[arg(long)]
        keys: PathBuf,
        /// The store's public key (store.pub): the ledger must exist and be signed by it.
        #[arg(long)]
        store_key: Option<PathBuf>,
        /// Record this run in the ledger, signing with the store's secret key (on the store's
        /// host, as the store's user).
        #[arg(long, requires = "who")]
        record_with: Option<PathBuf>,
        /// Who runs the verification (recorded with --record-with).
        #[arg(long)]
        who: Option<String>,
    },
    /// Read an archive.
    Archive {
        #[command(subcommand)]
        command: ArchiveCommand,
    },
    /// Inspect and replay batches the central store refused for good (agent stopped).
    DeadLetter {
        #[command(subcommand)]
        command: DeadLetterCommand,
    },
}

#[derive(Subcommand)]
enum ArchiveCommand {
    /// Print every archived record you may read as one JSON object per line (from the
    /// store's read API with --store, or a local archive with --archive). Recorded in the
    /// custody ledger with who and why.
    Cat {
        #[command(flatten)]
        read: Box<ReadArgs>,
    },
    /// Print the archived records matching host / stream / time / field filters.
    Search {
        #[command(flatten)]
        read: Box<ReadArgs>,
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        stream: Option<String>,
        /// Records at or after this time (RFC 3339, the record's `timestamp`).
        #[arg(long)]
        since: Option<String>,
        /// Records before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// `name=value`: a record field (dotted for nested) must equal value; repeatable.
        #[arg(long = "field")]
        fields: Vec<String>,
    },
    /// Make an operator token for the store's read API: appends its hash to the tokens
    /// file and prints the token once.
    Token {
        /// The store's tokens file (`[receiver.access] tokens_file`); created 0600.
        #[arg(long)]
        tokens: PathBuf,
        #[arg(long)]
        name: String,
        /// reader, auditor or compliance.
        #[arg(long)]
        role: String,
    },
}

#[derive(clap::Args)]
struct ReadArgs {
    /// A local archive directory (the store's operator, on its host).
    #[arg(long, conflicts_with = "store", required_unless_present = "store")]
    archive: Option<PathBuf>,
    /// The central store's base URL (`https://store:8443`), read through its API.
    #[arg(long)]
    store: Option<String>,
    /// Why you read: the reason or ticket id, written to the custody ledger.
    #[arg(long)]
    reason: Option<String>,
    /// File holding your operator token (else the LOGVEIL_TOKEN environment variable).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// CA bundle (PEM) that signs the store's certificate (https).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Your client certificate and key (PEM) when the store identifies operators by
    /// certificate.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Local reads: who you are (recorded).
    #[arg(long)]
    who: Option<String>,
    /// Local reads: the role you read as (reader, auditor, compliance), recorded.
    #[arg(long, default_value = "auditor")]
    role: String,
    /// Local reads: the store's secret key, to record the read in the archive's ledger.
    #[arg(long)]
    record_with: Option<PathBuf>,
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// List dead-lettered batches: stream, seq, records, reason.
    List {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the records of dead-lettered batches (already redacted) as JSON lines.
    Show {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        seq: Option<u64>,
    },
    /// Seal dead-lettered batches again under new seqs, so the agent ships them on its next
    /// start; they leave the dead-letter tree.
    Replay {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        seq: Option<u64>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Plain,
    Json,
    Logfmt,
    Auto,
}

impl From<FormatArg> for crate::config::Format {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Plain => Self::Plain,
            FormatArg::Json => Self::Json,
            FormatArg::Logfmt => Self::Logfmt,
            FormatArg::Auto => Self::Auto,
        }
    }
}

/// Errors that map to the config exit code.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct ConfigFailure(#[from] config::ConfigError);

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            if e.downcast_ref::<ConfigFailure>().is_some() {
                eprintln!("logveil: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            eprintln!("logveil: {}", describe(&e));
            ExitCode::from(1)
        }
    }
}

/// An error and its causes, `a: b: c`, without repeating a cause whose text an outer
/// message already includes (many errors here name their cause in their own message).
fn describe(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOGVEIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn load_agent(path: &std::path::Path) -> anyhow::Result<AgentConfig> {
    Ok(AgentConfig::load(path).map_err(ConfigFailure)?)
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Keygen {
            out,
            compliance: true,
            ..
        } => {
            let (secret, public, id) = crate::redact::legal::generate_pair(&out)?;
            println!(
                "wrote {} and {} (compliance key id {id})",
                secret.display(),
                public.display()
            );
        }
        Command::Reveal { key, input } => return reveal(&key, input.as_deref()),
        Command::Keygen {
            out,
            pseudonym: true,
            ..
        } => {
            std::fs::create_dir_all(&out)?;
            let path = out.join("pseudonym.key");
            let key = crate::redact::mask::PseudonymKey::generate(&path)?;
            println!("wrote {} (key id {})", path.display(), key.id());
        }
        Command::Keygen { out, name, .. } => {
            if !envelope::is_safe_identifier(&name) {
                bail!("--name must be letters, digits, '.', '_' or '-', not starting with '.'");
            }
            let key = keys::generate();
            let (secret, public) = keys::write_named_pair(&out, &name, &key)?;
            println!(
                "wrote {} and {} (key id {})",
                secret.display(),
                public.display(),
                keys::key_id(&key.verifying_key())
            );
        }
        Command::Run { config } => {
            let cfg = load_agent(&config)?;
            crate::agent::run(cfg)?;
        }
        Command::Receive { config } => {
            let cfg = ReceiverConfig::load(&config).map_err(ConfigFailure)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let shutdown = tokio_util::sync::CancellationToken::new();
                let stop = shutdown.clone();
                tokio::spawn(async move {
                    use tokio::signal::unix::{signal, SignalKind};
                    let mut term = signal(SignalKind::terminate()).expect("signal handler");
                    let mut int = signal(SignalKind::interrupt()).expect("signal handler");
                    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
                    stop.cancel();
                });
                crate::receive::run(cfg, shutdown).await
            })?;
        }
        Command::Validate { config } => {
            let text = std::fs::read_to_string(&config).map_err(|source| {
                ConfigFailure(config::ConfigError::Read {
                    path: config.clone(),
                    source,
                })
            })?;
            match config::kind_of(&text) {
                ConfigKind::Agent => {
                    AgentConfig::from_text(&config, &text).map_err(ConfigFailure)?;
                    println!("{}: valid agent config", config.display());
                }
                ConfigKind::Receiver => {
                    ReceiverConfig::from_text(&config, &text).map_err(ConfigFailure)?;
                    println!("{}: valid central store config", config.display());
                }
            }
        }
        Command::Redact {
            config,
            format,
            explain,
            file,
        } => {
            let redactor = match config {
                Some(path) => Redactor::from_config(&load_agent(&path)?.redact)?,
                None => Redactor::defaults(),
            };
            let input: Box<dyn std::io::Read> = match &file {
                Some(p) => Box::new(
                    std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
                ),
                None => Box::new(std::io::stdin().lock()),
            };
            let explain: Option<Box<dyn Write>> = match explain {
                None => None,
                Some(p) if p.as_os_str() == "-" => Some(Box::new(std::io::stderr().lock())),
                Some(p) => Some(Box::new(std::io::BufWriter::new(
                    std::fs::File::create(&p)
                        .with_context(|| format!("creating {}", p.display()))?,
                ))),
            };
            redact_stream(&redactor, format.into(), input, explain)?;
        }
        Command::Verify {
            archive,
            s3,
            ledger,
            keys,
            store_key,
            record_with,
            who,
        } => {
            let store_key = store_key
                .map(|p| keys::load_verifying_key(&p))
                .transpose()?;
            let report = match (&archive, s3) {
                (Some(archive), _) => {
                    crate::verify::verify_with(archive, &keys, store_key.as_ref())
                }
                (None, Some(config)) => {
                    let cfg = ReceiverConfig::load(&config).map_err(ConfigFailure)?;
                    let Some(s3) = &cfg.receiver.s3 else {
                        return Err(ConfigFailure(config::ConfigError::Invalid {
                            path: config.clone(),
                            line: 1,
                            key: "receiver.s3".into(),
                            message: "missing: verify --s3 needs the S3 archive's settings".into(),
                        })
                        .into());
                    };
                    let ledgers = if ledger.is_empty() {
                        vec![crate::custody::ledger_path(&cfg.receiver.archive_dir)]
                    } else {
                        ledger
                    };
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    runtime.block_on(crate::verify_s3::verify_s3(
                        s3,
                        &keys,
                        store_key.as_ref(),
                        &ledgers,
                    ))
                }
                (None, None) => unreachable!("clap requires --archive or --s3"),
            };
            println!("{report}");
            if let Some(archive) = &archive {
                let has_ledger = crate::custody::ledger_path(archive).exists();
                if record_with.is_none() && has_ledger {
                    eprintln!(
                        "note: this run is not recorded in the custody ledger; on the store's host, record it with --record-with store.key --who NAME"
                    );
                }
            }
            if let (Some(secret), Some(who), Some(archive)) = (record_with, who, &archive) {
                let n = crate::custody::append_local(
                    archive,
                    &secret,
                    crate::custody::Event::Verified {
                        who,
                        problems: report.problems.len() as u64,
                        batches: report.batches + report.tombstones,
                        ledger_entries: report.ledger_entries.unwrap_or(0),
                    },
                )?;
                println!("recorded as custody ledger entry {n}");
            }
            if !report.problems.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Archive { command } => return archive_command(command),
        Command::DeadLetter { command } => dead_letter(command)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn archive_command(command: ArchiveCommand) -> anyhow::Result<ExitCode> {
    let (read, query) = match command {
        ArchiveCommand::Token { tokens, name, role } => {
            use std::os::unix::fs::OpenOptionsExt;
            if !envelope::is_safe_identifier(&name) {
                bail!("--name must be letters, digits, '.', '_' or '-', not starting with '.'");
            }
            let role = crate::access::Role::parse(&role)
                .context("--role must be reader, auditor or compliance")?;
            let token = crate::access::new_token();
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&tokens)
                .with_context(|| format!("opening {}", tokens.display()))?;
            f.write_all(crate::access::token_line(&name, role, &token).as_bytes())?;
            f.sync_all()?;
            println!("{token}");
            return Ok(ExitCode::SUCCESS);
        }
        ArchiveCommand::Cat { read } => (read, crate::access::Query::default()),
        ArchiveCommand::Search {
            read,
            host,
            stream,
            since,
            until,
            fields,
        } => {
            let fields = fields
                .iter()
                .map(|f| crate::access::parse_field(f))
                .collect::<Result<_, _>>()?;
            let q = crate::access::Query {
                host,
                stream,
                since,
                until,
                fields,
            };
            q.check()?;
            (read, q)
        }
    };
    let (body, records) = match (&read.store, &read.archive) {
        (Some(store), _) => read_from_store(store, &read, &query)?,
        (None, Some(archive)) => read_local(archive, &read, &query)?,
        (None, None) => bail!("give --store URL or --archive DIR"),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    out.write_all(&body)?;
    out.flush()?;
    eprintln!("logveil: {records} records");
    Ok(ExitCode::SUCCESS)
}

fn reason_of(read: &ReadArgs) -> anyhow::Result<String> {
    match read.reason.as_deref().map(str::trim) {
        Some(r) if !r.is_empty() => Ok(r.to_string()),
        _ => bail!(
            "--reason is required: state why you read (a reason or ticket id); it is recorded"
        ),
    }
}

fn read_from_store(
    store: &str,
    read: &ReadArgs,
    query: &crate::access::Query,
) -> anyhow::Result<(Vec<u8>, u64)> {
    let reason = reason_of(read)?;
    let token = match &read.token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading {}", p.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("LOGVEIL_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
    };
    if token.is_none() && read.cert.is_none() {
        bail!("an identity is required: --token-file, LOGVEIL_TOKEN, or --cert/--key");
    }
    let tls = config::SinkTls {
        ca: read.ca.clone(),
        cert: read.cert.clone(),
        key: read.key.clone(),
        server_name: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = runtime.block_on(crate::access::client::fetch(
        store,
        token.as_deref(),
        &reason,
        query,
        Some(&tls),
    ))?;
    if let Some(n) = answer.ledger_entry {
        eprintln!("logveil: recorded as custody ledger entry {n}");
    }
    Ok((answer.body, answer.records))
}

/// A read of a local archive. With a custody ledger the read needs who, why and the store
/// key, and is recorded before any record is printed; an archive without a ledger (a store
/// run without `store_key`) is read as is.
fn read_local(
    archive: &std::path::Path,
    read: &ReadArgs,
    query: &crate::access::Query,
) -> anyhow::Result<(Vec<u8>, u64)> {
    if !crate::custody::ledger_path(archive).exists() {
        eprintln!(
            "logveil: {} has no custody ledger; this read is not recorded",
            archive.display()
        );
        let (body, n) =
            crate::access::search(archive, crate::access::Role::Compliance, query, usize::MAX)?;
        return Ok((body, n));
    }
    let reason = reason_of(read)?;
    let who = read
        .who
        .clone()
        .filter(|w| envelope::is_safe_identifier(w))
        .context(
            "--who is required (letters, digits, '.', '_' or '-'): local reads are recorded",
        )?;
    let secret = read
        .record_with
        .as_ref()
        .context("--record-with STORE_KEY is required: local reads of an archive with a custody ledger are recorded in it")?;
    let role = crate::access::Role::parse(&read.role)
        .context("--role must be reader, auditor or compliance")?;
    let event = |allowed: bool, records: u64| crate::custody::Event::Read {
        who: who.clone(),
        role: role.as_str().into(),
        via: "local".into(),
        reason: reason.clone(),
        what: query.describe(),
        allowed,
        records,
    };
    if let Err(e) = crate::access::authorize(role, query) {
        crate::custody::append_local(archive, secret, event(false, 0))?;
        bail!("{e} (the refusal is recorded)");
    }
    let (body, records) = crate::access::search(archive, role, query, usize::MAX)?;
    let n = crate::custody::append_local(archive, secret, event(true, records))?;
    eprintln!("logveil: recorded as custody ledger entry {n}");
    Ok((body, records))
}

/// One output line per input line; a `\r` before the `\n` is dropped like the agent does.
/// A record dropped by `drop_record` gives an empty line, so lines stay aligned.
fn redact_stream(
    redactor: &Redactor,
    format: crate::config::Format,
    input: Box<dyn std::io::Read>,
    mut explain: Option<Box<dyn Write>>,
) -> anyhow::Result<()> {
    let mut input = std::io::BufReader::with_capacity(1 << 16, input);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut line = Vec::new();
    let mut counts = Counts::default();
    let mut found = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        number += 1;
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        found.clear();
        let mut dropped = false;
        let (body, _) = crate::pipeline::record::redact_line(&line, |t| {
            let red = redactor.redact_record(
                t,
                format,
                &mut counts,
                explain.as_ref().map(|_| &mut found),
            );
            dropped |= red.dropped;
            red.text
        });
        if !dropped {
            out.write_all(body.as_bytes())?;
        }
        out.write_all(b"\n")?;
        if let Some(ex) = explain.as_mut() {
            for e in &found {
                writeln!(
                    ex,
                    "line={number} start={} end={} type={} rule={} mode={}{}",
                    crate::pipeline::record::input_offset(&line, e.start),
                    crate::pipeline::record::input_offset(&line, e.end),
                    e.kind,
                    e.rule,
                    e.mode,
                    if dropped { " record=dropped" } else { "" }
                )?;
            }
        }
        counts.clear();
    }
    out.flush()?;
    if let Some(ex) = explain.as_mut() {
        ex.flush()?;
    }
    Ok(())
}

/// `logveil reveal`: see the command's help.
fn reveal(key: &std::path::Path, input: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    use crate::redact::legal;
    let secret = legal::load_secret(key)?;
    let my_id = legal::key_id(&secret.public_key());
    let reader: Box<dyn std::io::Read> = match input {
        Some(p) => {
            Box::new(std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?)
        }
        None => Box::new(std::io::stdin().lock()),
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let (mut revealed, mut failed) = (0u64, 0u64);
    for (i, line) in std::io::BufReader::new(reader).lines().enumerate() {
        let line = line.context("reading the input")?;
        if line.trim().is_empty() {
            continue;
        }
        let Ok(serde_json::Value::Object(mut rec)) = serde_json::from_str(&line) else {
            eprintln!("logveil: input line {} is not a JSON record", i + 1);
            failed += 1;
            continue;
        };
        if rec.get("stream").and_then(|v| v.as_str()) != Some(legal::LEGAL_STREAM) {
            continue;
        }
        let text = |k: &str| match rec.get(k) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => "?".into(),
        };
        let named = format!(
            "legal record host={} path={} offset={} (exception {})",
            text("host"),
            text("path"),
            text("offset"),
            text("exception")
        );
        let opened = match rec.get("sealed").and_then(|v| v.as_str()) {
            None => Err("it has no `sealed` field"),
            Some(sealed) => legal::unseal(&secret, sealed),
        };
        match opened {
            Ok(fields) => {
                rec.remove("sealed");
                rec.insert("revealed".into(), serde_json::Value::Object(fields));
                serde_json::to_writer(&mut out, &rec)?;
                out.write_all(b"\n")?;
                revealed += 1;
            }
            Err(why) => {
                let record_key = text("key_id");
                let hint = if record_key != my_id {
                    format!(" (sealed to key id {record_key}; this key's id is {my_id})")
                } else {
                    String::new()
                };
                eprintln!("logveil: cannot open the sealed fields of {named}: {why}{hint}");
                failed += 1;
            }
        }
    }
    out.flush()?;
    eprintln!("logveil: {revealed} legal records revealed");
    if failed > 0 {
        eprintln!("logveil: {failed} records could not be revealed");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn open_buffer(config: &std::path::Path) -> anyhow::Result<(AgentConfig, Buffer)> {
    let cfg = load_agent(config)?;
    let buffer = Buffer::open(
        &cfg.agent.data_dir.join("buffer"),
        cfg.buffer.cache_capacity,
        cfg.buffer.max_bytes,
    )
    .context("opening the buffer (is the agent still running? stop it first)")?;
    Ok((cfg, buffer))
}

fn dead_letter(command: DeadLetterCommand) -> anyhow::Result<()> {
    match command {
        DeadLetterCommand::List { config } => {
            let (_, buffer) = open_buffer(&config)?;
            println!("stream\tseq\trecords\tbytes\treason");
            for dl in buffer.dead_letters()? {
                let records = Envelope::decode(&dl.envelope)
                    .map(|e| e.header.record_count.to_string())
                    .unwrap_or_else(|_| "?".into());
                println!(
                    "{}\t{}\t{records}\t{}\t{}",
                    dl.stream,
                    dl.seq,
                    dl.envelope.len(),
                    dl.reason
                );
            }
        }
        DeadLetterCommand::Show { config, seq } => {
            let (_, buffer) = open_buffer(&config)?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            for dl in buffer.dead_letters()? {
                if seq.is_some_and(|want| want != dl.seq) {
                    continue;
                }
                let env = Envelope::decode(&dl.envelope)?;
                out.write_all(&env.decompress(env.header.decompressed_len)?)?;
            }
        }
        DeadLetterCommand::Replay { config, seq } => {
            let (_, buffer) = open_buffer(&config)?;
            let key = keys::load_signing_key(&load_agent(&config)?.agent.signing_key)?;
            let mut replayed = 0;
            for dl in buffer.dead_letters()? {
                let (stream, s) = (dl.stream.as_str(), dl.seq);
                if seq.is_some_and(|want| want != s) {
                    continue;
                }
                let old = Envelope::decode(&dl.envelope)?;
                let state = buffer.chain_state(stream)?;
                // The payload is re-signed as held: its hash and length are taken from the
                // bytes (a batch refused for a payload that no longer matches its signed hash
                // can go once `show` read fine), and it must hold the records it declares.
                let header = Header {
                    kind: Kind::Data,
                    key_id: keys::key_id(&key.verifying_key()),
                    seq: state.next_seq,
                    prev_hash: state.link,
                    payload_sha256: envelope::sha256(old.payload),
                    payload_len: old.payload.len() as u64,
                    ..old.header.clone()
                };
                let (bytes, link) = envelope::seal(&header, old.payload, &key);
                let resealed = Envelope::decode(&bytes)?;
                if let Err(e) = crate::receive::validate::check_payload(
                    &resealed,
                    resealed.header.decompressed_len,
                ) {
                    bail!("{stream} seq {s} cannot be replayed: {e}");
                }
                buffer.seal(stream, state.next_seq, link, &bytes, &[])?;
                buffer.remove_dead_letter(stream, s)?;
                println!("replayed {stream} seq {s} as seq {}", state.next_seq);
                replayed += 1;
            }
            if replayed == 0 {
                bail!("no dead-lettered batch matched");
            }
        }
    }
    Ok(())
}
