//! `cargo xtask <command>`: project automation. Run `cargo xtask help`.
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    // CARGO_MANIFEST_DIR is xtask/; the workspace root is its parent.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn codegen() -> Result<()> {
    let proto = root().join("crates/sigil-proto/proto");
    let out = root().join("crates/sigil-proto/src/gen");
    std::fs::create_dir_all(&out)?;
    tonic_prost_build::configure()
        .out_dir(&out)
        .build_client(true)
        .build_server(true)
        .compile_protos(
            &[
                proto.join("workload.proto"),
                proto.join("types.proto"),
                proto.join("agent.proto"),
                proto.join("admin.proto"),
            ],
            &[proto],
        )
        .context("protoc failed (install protobuf-compiler)")?;
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("codegen") => codegen(),
        Some("help") | None => {
            println!("usage: cargo xtask codegen");
            Ok(())
        }
        Some(other) => bail!("unknown xtask command {other:?} (try `cargo xtask help`)"),
    }
}
