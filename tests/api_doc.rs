//! docs/API.md, the HTTP API guide, is generated from the OpenAPI document: this fails while the
//! file is not what `scripts/api-doc.py` makes of `grokforge openapi`, and checks that the
//! subcommand prints the document a node serves at `GET /openapi.json`.
//!
//! Regenerate the guide with `grokforge openapi | scripts/api-doc.py > docs/API.md`.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{get_json, grokforge, start};

fn printed_document() -> Vec<u8> {
    let output = grokforge().arg("openapi").output().unwrap();
    assert!(
        output.status.success(),
        "grokforge openapi: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

#[test]
fn docs_api_md_is_generated_from_the_openapi_document() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let document = printed_document();
    let mut generator = Command::new("python3")
        .arg(repo.join("scripts/api-doc.py"))
        .arg("--check")
        .arg(repo.join("docs/API.md"))
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs scripts/api-doc.py");
    generator
        .stdin
        .take()
        .unwrap()
        .write_all(&document)
        .unwrap();
    let output = generator.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn grokforge_openapi_prints_what_a_node_serves() {
    let printed: serde_json::Value = serde_json::from_slice(&printed_document()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let served = get_json(&format!("{}/openapi.json", server.base)).await;
    assert_eq!(printed, served);
}
