//! The `sigil-controller` command line, Go-flag style like the other Sigil binaries.
//! Exit codes: 0 done, 1 the command failed, 2 bad usage (as Go's `flag` package).

use sigil_flags::FlagSet;

use crate::crds::{crds, to_json, to_yaml};

const USAGE: &str = "Usage: sigil-controller <command> [flags]

Commands:
  crds                Prints the spire.spiffe.io CustomResourceDefinitions (kubectl apply -f -)

Run `sigil-controller <command> -h` for the flags of a command.";

/// Runs the CLI and returns the process exit code.
pub fn main(args: Vec<String>) -> i32 {
    match args.first().map(String::as_str) {
        Some("crds") => crds_cmd(&args[1..]),
        Some("-h" | "-help" | "--help" | "help") => {
            println!("{USAGE}");
            0
        }
        Some(other) => {
            eprintln!("Error: unknown command {other:?}\n\n{USAGE}");
            2
        }
        None => {
            eprintln!("{USAGE}");
            2
        }
    }
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
