//! `sigil-agent`: see the library for everything; this only hands over the arguments.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(sigil_agent::cli_main(args));
}
