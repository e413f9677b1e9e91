//! The `sigil-controller` command line, Go-flag style like the other Sigil binaries.
//! Exit codes: 0 done, 1 the command failed, 2 bad usage (as Go's `flag` package).

use std::path::{Path, PathBuf};

use sigil_flags::FlagSet;

use crate::config::{ControllerManagerConfig, Loaded};
use crate::crds::{crds, to_json, to_yaml};
use crate::run::{RunArgs, run};

const USAGE: &str = "Usage: sigil-controller [-config FILE] [flags]   (runs the controller)
       sigil-controller <command> [flags]

Commands:
  crds                Prints the spire.spiffe.io CustomResourceDefinitions (kubectl apply -f -)

Run `sigil-controller -h` for the controller's flags, `sigil-controller <command> -h` for a
command's.";

/// Runs the CLI and returns the process exit code.
pub fn main(args: Vec<String>) -> i32 {
    match args.first().map(String::as_str) {
        Some("crds") => crds_cmd(&args[1..]),
        Some("-h" | "-help" | "--help" | "help") => {
            println!(
                "{USAGE}\n\nFlags of the controller:\n{}",
                run_flags().usage()
            );
            0
        }
        None => run_cmd(&[]),
        Some(a) if a.starts_with('-') => run_cmd(&args),
        Some(other) => {
            eprintln!("Error: unknown command {other:?}\n\n{USAGE}");
            2
        }
    }
}

fn run_flags() -> FlagSet {
    FlagSet::new()
        .value(
            "config",
            "The controller will load its initial configuration from this file (spire-controller-manager's ControllerManagerConfig)",
        )
        .bool(
            "expand-env",
            "Expand environment variables in the configuration file",
        )
        .value(
            "spire-api-socket",
            "The path to the SPIRE API socket (deprecated; use spireServerSocketPath in the config file)",
        )
        .value(
            "kubeconfig",
            "Path to a kubeconfig (default: $KUBECONFIG, ~/.kube/config, then the pod's service account)",
        )
}

/// Runs the controller: exit 1 if it cannot start or stops on an error.
fn run_cmd(args: &[String]) -> i32 {
    let flags = run_flags();
    let parsed = match flags.parse(args).and_then(|p| p.no_args().map(|()| p)) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "Error: {e}\n{USAGE}\n\nFlags of the controller:\n{}",
                flags.usage()
            );
            return 2;
        }
    };
    let loaded = match parsed.get("config") {
        Some(path) => {
            match ControllerManagerConfig::load(Path::new(path), parsed.flag("expand-env")) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("Error: unable to load the config file: {e}");
                    return 1;
                }
            }
        }
        None => {
            let mut config = ControllerManagerConfig::default();
            config.spire_server_socket_path =
                crate::config::DEFAULT_SPIRE_SERVER_SOCKET_PATH.into();
            Loaded {
                config,
                options: Default::default(),
                not_used: Vec::new(),
            }
        }
    };
    if let Err(e) = init_logging(&loaded.config.log_level, &loaded.config.log_encoding) {
        eprintln!("Error: {e}");
        return 1;
    }
    let args = RunArgs {
        spire_api_socket: parsed.get("spire-api-socket").map(str::to_string),
        kubeconfig: parsed.get("kubeconfig").map(PathBuf::from),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: starting the runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(run(loaded, args)) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "sigil-controller failed");
            eprintln!("Error: {e}");
            1
        }
    }
}

/// upstream's `setLogger`: `logLevel` (debug, info, warn, error, ...) and `logEncoding`
/// (`console` or `json`); `RUST_LOG` overrides the level.
fn init_logging(level: &str, encoding: &str) -> Result<(), String> {
    let level = match level.to_ascii_lowercase().as_str() {
        "" | "info" => "info",
        "debug" => "debug",
        "warn" | "warning" => "warn",
        "error" | "dpanic" | "panic" | "fatal" => "error",
        other => {
            return Err(format!(
                "unable to parse log level: invalid log level: {other:?}"
            ));
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("warn,sigil_controller={level}"))
    });
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a person at a terminal, not in a pod's log.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let res = match encoding {
        "" | "console" => builder.try_init(),
        "json" => builder
            .json()
            .flatten_event(true)
            .with_target(false)
            .try_init(),
        other => {
            return Err(format!(
                "unable to parse log level: unrecognized log encoding: {other}"
            ));
        }
    };
    res.map_err(|e| e.to_string())
}

fn crds_flags() -> FlagSet {
    FlagSet::new().value(
        "output",
        "Output format: yaml (default, `---` separated) or json (a v1 List)",
    )
}

fn crds_cmd(args: &[String]) -> i32 {
    let flags = crds_flags();
    if args
        .iter()
        .any(|a| matches!(a.as_str(), "-h" | "-help" | "--help"))
    {
        println!("Usage of sigil-controller crds:\n{}", flags.usage());
        return 0;
    }
    let parsed = match flags.parse(args).and_then(|p| p.no_args().map(|()| p)) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "Error: {e}\nUsage of sigil-controller crds:\n{}",
                flags.usage()
            );
            return 2;
        }
    };
    let format = parsed.get("output").unwrap_or("yaml");
    let rendered = crds().and_then(|crds| match format {
        "yaml" => to_yaml(&crds).map(Some),
        "json" => to_json(&crds).map(Some),
        _ => Ok(None),
    });
    match rendered {
        Ok(Some(text)) => {
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            0
        }
        Ok(None) => {
            eprintln!("Error: invalid value {format:?} for flag -output: expected yaml or json");
            2
        }
        Err(e) => {
            eprintln!("Error: {e}");
            1
        }
    }
}
