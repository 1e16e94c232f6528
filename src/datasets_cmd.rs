//! `grokforge datasets …`: the corpora and tokenizers of a running node, over its HTTP API.
//!
//! `upload` streams a local file to `POST /datasets` with a progress bar (the node hashes,
//! bounds and validates it, and answers with the dataset, which jobs then name `ds:<id>`);
//! `list` prints a table of the uploaded datasets and the built-in tasks; `show` the record as
//! JSON; `delete` removes one that no job uses.

use std::path::PathBuf;

use anyhow::Context;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use crate::client::{self, Client};

#[derive(clap::Args)]
pub struct DatasetsArgs {
    #[command(flatten)]
    node: client::NodeFlags,
    #[command(subcommand)]
    command: DatasetsCommand,
}

#[derive(clap::Subcommand)]
pub enum DatasetsCommand {
    /// Upload a corpus (UTF-8 text or JSONL) or a `tokenizer.json`; prints the dataset.
    Upload {
        /// The local file.
        file: PathBuf,
        /// What to call it on the node (default: the file's name).
        #[arg(long)]
        name: Option<String>,
        /// text, jsonl or tokenizer (default: jsonl for *.jsonl, tokenizer for
        /// tokenizer.json, else text).
        #[arg(long)]
        kind: Option<String>,
        /// JSONL: the field holding the text.
        #[arg(long)]
        text_field: Option<String>,
    },
    /// Uploaded datasets and the built-in tasks, as a table.
    List,
    /// One dataset's record as JSON (`ds:<id>` or the id).
    Show { id: String },
    /// Delete a dataset no queued or running job uses.
    Delete { id: String },
}

pub fn run(args: DatasetsArgs) -> anyhow::Result<()> {
    let client = args.node.connect()?;
    client::block_on(execute(&client, args.command))
}

/// The kind a file is uploaded as when `--kind` is not given.
fn guess_kind(file: &std::path::Path) -> &'static str {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name.ends_with(".jsonl") {
        "jsonl"
    } else if name == "tokenizer.json" || name.ends_with(".tokenizer.json") {
        "tokenizer"
    } else {
        "text"
    }
}

async fn execute(client: &Client, command: DatasetsCommand) -> anyhow::Result<()> {
    match command {
        DatasetsCommand::Upload {
            file,
            name,
            kind,
            text_field,
        } => {
            let length = tokio::fs::metadata(&file)
                .await
                .with_context(|| format!("cannot read {}", file.display()))?
                .len();
            let opened = tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("cannot open {}", file.display()))?;
            let name = name.unwrap_or_else(|| {
                file.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "dataset".into())
            });
            let mut query = vec![
                ("name", name),
                (
                    "kind",
                    kind.unwrap_or_else(|| guess_kind(&file).to_string()),
                ),
            ];
            if let Some(field) = text_field {
                query.push(("text_field", field));
            }
            let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(format!("uploading {}", file.display()));
            let counted = bar.clone();
            let chunks = tokio_util::io::ReaderStream::with_capacity(opened, 256 * 1024).inspect(
                move |chunk| {
                    if let Ok(chunk) = chunk {
                        counted.inc(chunk.len() as u64);
                    }
                },
            );
            let body = reqwest::Body::wrap_stream(chunks);
            let result: anyhow::Result<Value> = client
                .post_stream(&["datasets"], &query, body, length)
                .await;
            bar.finish_and_clear();
            let dataset = result?;
            println!("{}", serde_json::to_string_pretty(&dataset)?);
        }
        DatasetsCommand::List => {
            let mut rows = Vec::new();
            let mut offset = 0u64;
            let mut builtin = Vec::new();
            loop {
                let page: Value = client
                    .get_json(&["datasets"], &[("offset", offset.to_string())])
                    .await?;
                for dataset in page["datasets"].as_array().into_iter().flatten() {
                    let text = |key: &str| dataset[key].as_str().unwrap_or_default().to_string();
                    rows.push([
                        text("reference"),
                        text("name"),
                        text("kind"),
                        dataset["size_bytes"].to_string(),
                        dataset["records"].to_string(),
                        text("sha256").chars().take(12).collect(),
                        text("created_at"),
                    ]);
                }
                if builtin.is_empty() {
                    builtin = page["builtin"].as_array().cloned().unwrap_or_default();
                }
                match page["next_offset"].as_u64() {
                    Some(next) if next > offset => offset = next,
                    _ => break,
                }
            }
            client::print_table(
                [
                    "DATASET", "NAME", "KIND", "BYTES", "RECORDS", "SHA256", "CREATED",
                ],
                &rows,
            );
            let names: Vec<String> = builtin
                .iter()
                .map(|task| task["id"].as_str().unwrap_or_default().to_string())
                .collect();
            if !names.is_empty() {
                println!("built-in: {}", names.join(", "));
            }
        }
        DatasetsCommand::Show { id } => {
            let dataset: Value = client.get_json(&["datasets", &id], &[]).await?;
            println!("{}", serde_json::to_string_pretty(&dataset)?);
        }
        DatasetsCommand::Delete { id } => {
            let deleted: Value = client.delete_json(&["datasets", &id]).await?;
            let shown = deleted["id"]
                .as_str()
                .map(|i| format!("ds:{i}"))
                .unwrap_or(id);
            println!("deleted {shown}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_follows_the_file_name_unless_given() {
        assert_eq!(guess_kind("corpus.jsonl".as_ref()), "jsonl");
        assert_eq!(guess_kind("/x/tokenizer.json".as_ref()), "tokenizer");
        assert_eq!(guess_kind("book.txt".as_ref()), "text");
    }
}
