//! The `xmppd` binary: the server and its admin commands.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::io::BufRead;
use std::path::PathBuf;
use xmppd::config::Config;
use xmppd::storage::{AccountCredentials, Storage};

#[derive(Parser)]
#[command(name = "xmppd", version, about = "A native XMPP server")]
struct Cli {
    /// Configuration file (default: ./xmppd.toml if present, else built-in defaults).
    #[arg(long, short, global = true, env = "XMPPD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Manage accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Validate the configuration and explain mistakes.
    CheckConfig,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account; the password is read from stdin without --password.
    Add {
        jid: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Set a new password.
    Passwd {
        jid: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Delete an account and its data.
    Del { jid: String },
    /// List accounts, optionally of one domain.
    List { domain: Option<String> },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("xmppd: {e:#}");
        std::process::exit(1);
    }
}

fn load_config(path: &Option<PathBuf>) -> Result<Config> {
    let default = PathBuf::from("xmppd.toml");
    let path = match path {
        Some(p) => Some(p.clone()),
        None if default.exists() => Some(default),
        None => None,
    };
    Ok(Config::load(path.as_deref())?)
}

fn run(cli: Cli) -> Result<()> {
    let config = load_config(&cli.config)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => rt.block_on(serve(config)),
        Command::CheckConfig => {
            println!(
                "configuration OK: hosts {:?}, storage {}, {} listener(s), modules {:?}",
                config.hosts,
                xmppd::server::redact(&config.storage_url()),
                config.listeners.len(),
                config.modules.enabled
            );
            Ok(())
        }
        Command::User(cmd) => rt.block_on(user(config, cmd)),
    }
}

async fn serve(config: Config) -> Result<()> {
    let running = xmppd::start(config).await?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate() => {}
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

#[cfg(unix)]
async fn terminate() {
    if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        s.recv().await;
    } else {
        std::future::pending::<()>().await;
    }
}

#[cfg(not(unix))]
async fn terminate() {
    std::future::pending::<()>().await;
}

fn account_jid(config: &Config, jid: &str) -> Result<jid::BareJid> {
    let j = jid::BareJid::new(jid).with_context(|| format!("`{jid}` is not a valid JID"))?;
    if j.node().is_none() {
        bail!("`{jid}` has no user part (expected user@domain)");
    }
    if !config.serves(j.domain().as_str()) {
        bail!(
            "`{}` is not one of the configured hosts {:?}",
            j.domain(),
            config.hosts
        );
    }
    Ok(j)
}

fn password(flag: Option<String>) -> Result<String> {
    let p = match flag {
        Some(p) => p,
        None => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    if p.is_empty() {
        bail!("empty password");
    }
    Ok(p)
}

/// Make a running server drop its caches about accounts (and wait for it).
async fn confirm_change(storage: &Storage) -> Result<()> {
    if !storage.external_change().await? {
        eprintln!(
            "warning: a server seems to run on this database but did not confirm the change; \
             it applies it within a second of noticing"
        );
    }
    Ok(())
}

async fn user(config: Config, cmd: UserCommand) -> Result<()> {
    let storage = Storage::open(&config.storage_url(), Some(1)).await?;
    match cmd {
        UserCommand::Add { jid, password: p } => {
            let j = account_jid(&config, &jid)?;
            let creds = AccountCredentials::from_password(&password(p)?);
            if !storage.accounts.create_account(j.as_str(), &creds).await? {
                bail!("{j} already exists");
            }
            // A running server drops what it cached about accounts.
            confirm_change(&storage).await?;
            println!("created {j}");
        }
        UserCommand::Passwd { jid, password: p } => {
            let j = account_jid(&config, &jid)?;
            let creds = AccountCredentials::from_password(&password(p)?);
            if !storage.accounts.set_credentials(j.as_str(), &creds).await? {
                bail!("{j} does not exist");
            }
            // A running server drops what it cached about accounts.
            confirm_change(&storage).await?;
            println!("password changed for {j}");
        }
        UserCommand::Del { jid } => {
            let j = account_jid(&config, &jid)?;
            if !storage.accounts.delete_account(j.as_str()).await? {
                bail!("{j} does not exist");
            }
            // A running server drops what it cached about accounts.
            confirm_change(&storage).await?;
            println!("deleted {j}");
        }
        UserCommand::List { domain } => {
            for j in storage.accounts.list_accounts(domain.as_deref()).await? {
                println!("{j}");
            }
        }
    }
    Ok(())
}
