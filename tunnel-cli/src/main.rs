//! `tunnel-cli`: the command-line front end of tunnel-core. It parses flags and TOML, sets up
//! logging, and calls the library; no protocol logic lives here.

#![deny(unsafe_code)]

/// Prints a line on stdout, as `println!` does, but never panics: when whoever read the
/// output is gone (`| head`, a restarted journal), the tunnel goes on without it.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Writes a line on stdout and flushes it, returning how that went: for the output a one-shot
/// command exists for (see [`written`]).
macro_rules! emit {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        writeln!(out, $($arg)*).and_then(|()| out.flush())
    }};
}

/// [`say!`] for stderr.
macro_rules! say_err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod admin;
mod alloc;
mod args;
mod connect;
mod fd_limit;
mod notify;
mod reload;
mod serve;
mod shutdown;
mod task;

use std::process::ExitCode;

use clap::Parser;

/// Exit status for bad flags or configuration (clap uses the same for usage errors).
const EXIT_USAGE: u8 = 2;
/// Exit status for a runtime failure: refused by the server, cannot listen, and the like.
const EXIT_FAILURE: u8 = 1;

/// How long blocking work left running when a command ends may delay the exit.
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// A failure with the exit status it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl std::fmt::Display) -> Self {
        Self { code: EXIT_USAGE, message: message.to_string() }
    }

    /// A configuration that cannot be used: the whole chain of causes, and for a missing
    /// setting, the flags that provide it.
    fn config(err: tunnel_core::config::ConfigError) -> Self {
        use tunnel_core::config::ConfigError;
        let hint = match &err {
            ConfigError::Missing { key: "server", .. } => " (pass --server HOST:PORT)",
            ConfigError::Missing { key: "token", .. } => " (pass --token or set TUNNEL_TOKEN)",
            ConfigError::Missing { key: "fingerprint", .. } => {
                " (pass --fingerprint, printed by `tunnel-cli serve`, or --ca PEM; \
                 or --insecure-plaintext on both sides)"
            }
            _ => "",
        };
        Self::usage(format!("{}{hint}", tunnel_core::log::Chain(&err)))
    }

    fn runtime(message: impl std::fmt::Display) -> Self {
        Self { code: EXIT_FAILURE, message: message.to_string() }
    }

    /// A failure at run time: the error with its chain of causes.
    fn error(err: impl std::error::Error + 'static) -> Self {
        Self::runtime(tunnel_core::log::Chain(&err))
    }
}

/// The threads that carry the tunnel's connections, one per core (`tunnel_core::shards`: a
/// connection and the streams it carries then stay on one thread).
fn shards() -> Result<tunnel_core::shards::Shards, Failure> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    tunnel_core::shards::Shards::start(cores)
        .map_err(|e| Failure::runtime(format!("cannot start threads: {e}")))
}

/// A one-shot command's output written, or its failure: a reader that left early (`| head`)
/// is no failure, a full disk under `> file` is.
fn written(result: std::io::Result<()>) -> Result<(), Failure> {
    match result {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::runtime(format!("cannot write the output: {err}")))
        }
        _ => Ok(()),
    }
}

fn main() -> ExitCode {
    alloc::tune();
    let cli = args::Cli::parse();
    init_logging(cli.log_format);
    match fd_limit::raise() {
        Ok((before, after)) if before != after => {
            tracing::debug!(?before, ?after, "raised the soft open-file limit to the hard limit")
        }
        Ok(_) => {}
        Err(err) => tracing::warn!("cannot raise the open-file limit to the hard limit: {err}"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            say_err!("error: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            args::Command::Serve(args) => serve::run(args).await,
            args::Command::Connect(args) => connect::run(args).await,
            args::Command::Fingerprint(args) => fingerprint(&args),
            args::Command::Admin(args) => admin::run(args).await,
            args::Command::Completions { shell } => {
                let mut command = <args::Cli as clap::CommandFactory>::command();
                let mut script = Vec::new();
                clap_complete::generate(shell, &mut command, "tunnel-cli", &mut script);
                if shell == clap_complete::Shell::Bash {
                    script = bash_states_spelled_as_the_loop_spells_them(&script);
                }
                written(std::io::Write::write_all(&mut std::io::stdout().lock(), &script))
            }
            args::Command::Man { subcommand } => man(subcommand.as_deref()),
        }
    });
    // What the command awaited is done. A name lookup or a file read still running on a
    // blocking thread (a resolver that does not answer, a hung mount) would hold the exit
    // until it returns; it gets a moment, not a say in when the process ends.
    runtime.shutdown_timeout(EXIT_GRACE);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            say_err!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// Libraries whose logs are kept to errors unless `RUST_LOG` names them (`rustls=warn`) or
/// asks for `debug` or `trace` everywhere (`tunnel_core=debug` does not).
const QUIET_LIBRARIES: [&str; 2] = ["rustls", "h2"];

/// Logs go to stderr (stdout carries the addresses and commands users and scripts read),
/// filtered by `RUST_LOG` (default `info`), as text or as one JSON object per line. Neither
/// output going away stops the process.
fn init_logging(format: args::LogFormat) {
    let asked = std::env::var("RUST_LOG").unwrap_or_default();
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The TLS and HTTP/2 libraries warn once per connection about what a stranger sent (an
    // illegal server name, a stream reset): lines anyone could write to our disk. Our own
    // reports of failed handshakes are rate-limited; theirs are kept to errors unless asked
    // for, by name or by debugging everything.
    let directives: Vec<&str> = asked.split(',').map(str::trim).collect();
    let debugging =
        directives.iter().any(|d| d.eq_ignore_ascii_case("debug") || d.eq_ignore_ascii_case("trace"));
    let names = |library: &str| {
        directives.iter().any(|d| {
            let target = d.split(['=', '[']).next().unwrap_or_default();
            target == library || target.strip_prefix(library).is_some_and(|rest| rest.starts_with("::"))
        })
    };
    for library in QUIET_LIBRARIES {
        if !debugging && !names(library) {
            if let Ok(directive) = format!("{library}=error").parse() {
                filter = filter.add_directive(directive);
            }
        }
    }
    // A log line that cannot be written is dropped: the subscriber's own report of it would
    // panic on the same closed stderr.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        args::LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        args::LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

/// clap_complete's bash script (4.6.12) names the state after `tunnel-cli connect` as
/// `tunnel__cli__subcmd__connect` where its dispatch loop builds it, but labels the case arm
/// `tunnel__subcmd__cli__subcmd__connect` (the bin name's hyphen taken for a subcommand
/// separator, clap issue 6421), so nothing completes past the first word. The arms are spelled
/// as the loop spells them.
fn bash_states_spelled_as_the_loop_spells_them(script: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(script).replace("tunnel__subcmd__cli", "tunnel__cli").into_bytes()
}

/// The manual page of `tunnel-cli`, or of one of its subcommands, from the same definitions
/// as the flags.
fn man(subcommand: Option<&str>) -> Result<(), Failure> {
    let mut command = <args::Cli as clap::CommandFactory>::command();
    let page = match subcommand {
        None => command,
        Some(name) => {
            command.build();
            let found = command.find_subcommand(name).cloned();
            let sub = found.ok_or_else(|| Failure::usage(format!("no subcommand `{name}`")))?;
            let title = format!("tunnel-cli-{name}");
            sub.name(title.clone()).bin_name(title)
        }
    };
    written(clap_mangen::Man::new(page).render(&mut std::io::stdout()))
}

fn fingerprint(args: &args::FingerprintArgs) -> Result<(), Failure> {
    let fingerprint = tunnel_core::tls::fingerprint_of_pem_file(&args.cert)
        .map_err(|e| Failure::usage(tunnel_core::log::Chain(&e)))?;
    written(emit!("{fingerprint}"))
}
