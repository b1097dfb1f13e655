//! `cargo xtask openapi [--check]`: writes orchestratord's OpenAPI document, generated from the wire
//! types, to `contracts/openapi/orchestratord.json`; with `--check` it only compares and exits 1 when
//! the committed file is out of date.

use std::path::PathBuf;

use orchestratord::http::openapi::{document_json, COMMITTED_PATH};

#[derive(clap::Args)]
pub struct Args {
    /// Compare instead of writing; exit 1 when the committed document differs.
    #[arg(long)]
    check: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(COMMITTED_PATH);
    let generated = document_json();
    let committed = std::fs::read_to_string(&path).ok();
    if a.check {
        if committed.as_deref() == Some(generated.as_str()) {
            eprintln!("[openapi] {COMMITTED_PATH} is up to date");
            return Ok(());
        }
        eprintln!(
            "[openapi] {COMMITTED_PATH} is out of date: run `cargo xtask openapi` to regenerate"
        );
        std::process::exit(1);
    }
    if committed.as_deref() == Some(generated.as_str()) {
        eprintln!("[openapi] {COMMITTED_PATH} is up to date");
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, generated)?;
    eprintln!("[openapi] wrote {COMMITTED_PATH}");
    Ok(())
}
