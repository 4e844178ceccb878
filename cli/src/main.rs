//! `kubectl wirekube`: installed as `kubectl-wirekube` on PATH, kubectl runs it as a plugin.
//! Exit codes: 0 ok, 1 `doctor` found failures, 2 usage or connection error.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use kubectl_wirekube::fetch::{self, Target};
use kubectl_wirekube::{CliError, Snapshot, doctor, explain, netcheck, status};

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-wirekube",
    bin_name = "kubectl wirekube",
    version,
    about = "Health and paths of a WireKube mesh"
)]
struct Cli {
    /// Kubeconfig file (default: KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current context).
    #[arg(long, global = true)]
    context: Option<String>,
    /// Namespace WireKube is installed in (operator, agents, Lease).
    #[arg(short = 'n', long, global = true, default_value = "wirekube-system")]
    namespace: String,
    /// WireKubeMesh to report on (default: the only one).
    #[arg(long, global = true)]
    mesh: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every pair as a matrix of the paths the agents report, then each direction in detail.
    Status {
        /// List only the directions that are not up as planned (text output; JSON has all).
        #[arg(long)]
        problems: bool,
    },
    /// The facts and the planning rule behind one pair's path, and what the agents do.
    Explain { node_a: String, node_b: String },
    /// Checks the install and every agent's report; exits 1 when a check fails.
    Doctor,
    /// What one node's agent found: NAT type, mappings, STUN and relay.
    Netcheck { node: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // kube's rustls-tls feature selects no crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) => rt.block_on(run(&cli)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: &Cli) -> Result<u8, CliError> {
    let target = Target {
        kubeconfig: cli.kubeconfig.clone(),
        context: cli.context.clone(),
    };
    let (client, server) = fetch::connect(&target).await?;
    let snap = fetch::snapshot(&client, &server, &cli.namespace, cli.mesh.as_deref()).await?;
    let json = cli.output == Output::Json;
    match &cli.command {
        Command::Doctor => {
            let checks = doctor::checks(&snap, snap.taken_at);
            print(json, &checks, || doctor::to_text(&checks))?;
            return Ok(if doctor::failed(&checks) { 1 } else { 0 });
        }
        Command::Status { problems } => {
            need_mesh(&snap, cli)?;
            let r = status::render(&snap);
            print(json, &r, || r.to_text(*problems))?;
        }
        Command::Explain { node_a, node_b } => {
            need_mesh(&snap, cli)?;
            let e = explain::explain(&snap, node_a, node_b)?;
            print(json, &e, || e.to_text())?;
        }
        Command::Netcheck { node } => {
            need_mesh(&snap, cli)?;
            let n = netcheck::netcheck(&snap, node)?;
            print(json, &n, || n.to_text())?;
        }
    }
    Ok(0)
}

fn need_mesh(snap: &Snapshot, cli: &Cli) -> Result<(), CliError> {
    match &snap.mesh {
        Some(_) => Ok(()),
        None => Err(CliError::NoMesh(
            cli.mesh.clone().unwrap_or_else(|| "at all".into()),
        )),
    }
}

fn print<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce() -> String,
) -> Result<(), CliError> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", text());
    }
    Ok(())
}
