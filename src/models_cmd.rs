//! `grokforge models …`: the model registry of the local data dir, without a running node, or
//! of a running node with `--server`.
//!
//! Locally it opens the same database and artifact store a node of this configuration uses,
//! runs one registry call on a short-lived tokio runtime and prints the result: a table for
//! `list`, the verified record as JSON for `show`, the package path for `export`, and what `gc`
//! removed. With `--server` the same commands (except `gc`, which belongs to the node's own
//! disk) go through the node's HTTP API, and `export` downloads the package: the archive is
//! written under a temporary name, its size checked against the export record and every file
//! in it against the SHA-256 its manifest lists, and only then renamed into place.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use grokforge_actors::storage::export::ExportManifest;
use grokforge_actors::storage::{
    ArtifactStore, Compression, Database, DatabaseTarget, ExportFormat, ExportRecord, GcOptions,
    ModelFilter, ModelRecord, ModelRegistry,
};
use grokforge_config::{ConfigManager, DatabaseKind, Settings};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::client::{self, Client};

#[derive(clap::Args)]
pub struct ModelsArgs {
    /// TOML configuration file (defaults → this file → GROKFORGE__SECTION__KEY variables).
    #[arg(long, env = "GROKFORGE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// The node's data dir (database, artifacts, exports; with --server only its admin token).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Ask a running node at this HTTP address instead of opening the local data dir.
    #[arg(long, env = "GROKFORGE_SERVER", global = true)]
    server: Option<String>,
    /// Bearer token for --server (default: the admin token in <data_dir>/admin-token, if readable).
    #[arg(long, env = "GROKFORGE_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: ModelsCommand,
}

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// Models in the registry, oldest first, as a table.
    List {
        /// Only models of this phase (e.g. `cognate`).
        #[arg(long)]
        phase: Option<String>,
        /// Only models of this name.
        #[arg(long)]
        name: Option<String>,
        /// Only models carrying this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Only the phases' winners.
        #[arg(long)]
        winner: bool,
    },
    /// One model's record as JSON, after checking its files against their SHA-256.
    Show {
        /// Model id.
        id: Uuid,
    },
    /// Package models for PyTorch / Hugging Face users under `<artifacts>/exports/`; with
    /// --server also download the package and verify it.
    Export {
        /// Model ids.
        #[arg(required = true)]
        ids: Vec<Uuid>,
        /// Which files of each model go in (config and metadata always do).
        #[arg(long, value_enum, default_value_t = FormatArg::All)]
        format: FormatArg,
        /// Write a directory instead of a zip archive (with --server only its manifest is
        /// downloaded; the files stay on the node).
        #[arg(long)]
        no_compress: bool,
        /// With --server: where to save the download, a file or an existing directory
        /// (default: the current directory).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Delete a model: its record and its files.
    Delete {
        /// Model id.
        id: Uuid,
    },
    /// Remove files no record accounts for (unfinished writes, orphaned models and exports).
    Gc {
        /// Say what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FormatArg {
    /// Every file the model was saved with.
    All,
    /// Only the primary file.
    Primary,
    /// Only the safetensors weights.
    Safetensors,
}

impl From<FormatArg> for ExportFormat {
    fn from(format: FormatArg) -> ExportFormat {
        match format {
            FormatArg::All => ExportFormat::All,
            FormatArg::Primary => ExportFormat::Primary,
            FormatArg::Safetensors => ExportFormat::Safetensors,
        }
    }
}

/// Runs one `models` subcommand against the local registry, or the node `--server` names.
pub fn run(args: ModelsArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // An empty GROKFORGE_SERVER is as good as none.
    if let Some(server) = args.server.as_deref().filter(|s| !s.trim().is_empty()) {
        let client = client::connect(server, args.token.clone(), || {
            Ok(load_settings(&args)?.node.data_dir)
        })?;
        return runtime.block_on(execute_remote(&client, args.command));
    }
    if let ModelsCommand::Export { out: Some(_), .. } = &args.command {
        bail!(
            "--out needs --server: a local export is written under <artifacts>/exports/ (its \
             path is printed)"
        );
    }
    let settings = load_settings(&args)?;
    runtime.block_on(execute(settings, args.command))
}

/// The same layering as `serve`: defaults → file → environment → flags.
fn load_settings(args: &ModelsArgs) -> anyhow::Result<Settings> {
    let mut settings = Settings::load(args.config.as_deref(), std::env::vars())?;
    if let Some(data_dir) = &args.data_dir {
        settings.node.data_dir = data_dir.clone();
    }
    settings.validate()?;
    Ok(settings)
}

async fn open_registry(settings: &Settings) -> anyhow::Result<ModelRegistry> {
    let target = match ConfigManager::new(settings.clone()).database_config().kind {
        DatabaseKind::Sqlite { path } => DatabaseTarget::Sqlite(path),
        DatabaseKind::Postgres { url } => DatabaseTarget::Postgres(url),
    };
    let db = Database::connect(
        &target,
        settings.database.max_connections,
        settings.database.connect_timeout(),
    )
    .await
    .with_context(|| format!("cannot open the model database {target}"))?;
    Ok(ModelRegistry::new(
        db,
        ArtifactStore::new(settings.artifacts_dir()),
    ))
}

async fn execute(settings: Settings, command: ModelsCommand) -> anyhow::Result<()> {
    let registry = open_registry(&settings).await?;
    match command {
        ModelsCommand::List {
            phase,
            name,
            tag,
            winner,
        } => {
            let filter = ModelFilter {
                phase,
                name,
                tag,
                winner: winner.then_some(true),
            };
            print_models(&registry.list(&filter).await?);
        }
        ModelsCommand::Show { id } => {
            let model = registry.verify(id).await?;
            println!("{}", serde_json::to_string_pretty(&model)?);
        }
        ModelsCommand::Export {
            ids,
            format,
            no_compress,
            out: _,
        } => {
            let compression = if no_compress {
                Compression::None
            } else {
                Compression::Deflate
            };
            let export = registry
                .export_models(&ids, format.into(), compression)
                .await?;
            println!(
                "export {} ({} models, {} bytes): {}",
                export.id,
                export.model_ids.len(),
                export.size_bytes,
                registry.export_path(&export).display()
            );
        }
        ModelsCommand::Delete { id } => {
            let model = registry.delete(id).await?;
            println!("deleted {} ({} v{})", model.id, model.name, model.version);
        }
        ModelsCommand::Gc { dry_run } => {
            let report = registry
                .gc(GcOptions {
                    dry_run,
                    ..GcOptions::default()
                })
                .await?;
            let verb = if dry_run { "would remove" } else { "removed" };
            for removal in &report.removed {
                // The reason as the JSON API spells it (`orphan_model`, `temp_file`, …).
                let reason = serde_json::to_value(removal.reason)?;
                println!(
                    "{verb} {} ({}, {} bytes)",
                    removal.path.display(),
                    reason.as_str().unwrap_or_default(),
                    removal.size_bytes
                );
            }
            println!(
                "{verb} {} entries, {} bytes",
                report.removed.len(),
                report.removed_bytes()
            );
        }
    }
    Ok(())
}

fn print_models(models: &[ModelRecord]) {
    if models.is_empty() {
        println!("no models");
        return;
    }
    let rows: Vec<[String; 8]> = models
        .iter()
        .map(|m| {
            [
                m.id.to_string(),
                m.name.clone(),
                format!("v{}", m.version),
                m.phase.clone(),
                if m.winner { "yes" } else { "" }.to_string(),
                human_size(m.files.iter().map(|f| f.size_bytes).sum()),
                m.tags.join(","),
                m.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            ]
        })
        .collect();
    client::print_table(
        [
            "ID", "NAME", "VERSION", "PHASE", "WINNER", "SIZE", "TAGS", "CREATED",
        ],
        &rows,
    );
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The same commands through the node's HTTP API.
async fn execute_remote(client: &Client, command: ModelsCommand) -> anyhow::Result<()> {
    match command {
        ModelsCommand::List {
            phase,
            name,
            tag,
            winner,
        } => {
            let query = list_query(phase, name, tag, winner);
            let models: Vec<ModelRecord> = client.get_json(&["models"], &query).await?;
            print_models(&models);
        }
        ModelsCommand::Show { id } => {
            let model: serde_json::Value =
                client.get_json(&["models", &id.to_string()], &[]).await?;
            println!("{}", serde_json::to_string_pretty(&model)?);
        }
        ModelsCommand::Export {
            ids,
            format,
            no_compress,
            out,
        } => {
            let body = serde_json::json!({
                "model_ids": ids,
                "format": ExportFormat::from(format).as_str(),
                "compression": !no_compress,
            });
            let export: ExportRecord = client.post_json(&["models", "export"], Some(body)).await?;
            let target = download_target(out.as_deref(), &export);
            let download = download_export(client, &export, &target).await?;
            println!(
                "export {} ({} models, {} bytes) → {}",
                export.id,
                export.model_ids.len(),
                export.size_bytes,
                target.display()
            );
            println!("sha256 {}", download.sha256);
            if export.compressed {
                println!(
                    "verified {} files against the manifest",
                    download.files_verified
                );
            } else {
                println!(
                    "a directory export: the files stay on the node under <artifacts>/{}; \
                     this is its manifest",
                    export.path
                );
            }
        }
        ModelsCommand::Delete { id } => {
            let model: ModelRecord = client.delete_json(&["models", &id.to_string()]).await?;
            println!("deleted {} ({} v{})", model.id, model.name, model.version);
        }
        ModelsCommand::Gc { .. } => bail!(
            "gc works on the node's own disk: run `grokforge models gc` on the node, \
             without --server"
        ),
    }
    Ok(())
}

fn list_query(
    phase: Option<String>,
    name: Option<String>,
    tag: Option<String>,
    winner: bool,
) -> Vec<(&'static str, String)> {
    [
        ("phase", phase),
        ("name", name),
        ("tag", tag),
        ("winner", winner.then(|| "true".to_string())),
    ]
    .into_iter()
    .filter_map(|(key, value)| value.map(|v| (key, v)))
    .collect()
}

/// The file name is made here from the export id, never taken from the answer: `--out` when it
/// names a file, else `grokforge-export-<id>.zip` (or `…-manifest.json` for a directory
/// export) in `--out` or the current directory.
fn download_target(out: Option<&Path>, export: &ExportRecord) -> PathBuf {
    let name = if export.compressed {
        format!("grokforge-export-{}.zip", export.id)
    } else {
        format!("grokforge-export-{}-manifest.json", export.id)
    };
    match out {
        Some(dir) if dir.is_dir() => dir.join(name),
        Some(file) => file.to_path_buf(),
        None => PathBuf::from(name),
    }
}

struct Download {
    sha256: String,
    files_verified: usize,
}

/// Streams `GET /exports/{id}` into `<target>.part`, verifies it, then renames it to `target`;
/// a download that breaks off or fails a check leaves nothing behind.
async fn download_export(
    client: &Client,
    export: &ExportRecord,
    target: &Path,
) -> anyhow::Result<Download> {
    let mut partial = target.as_os_str().to_owned();
    partial.push(".part");
    let partial = PathBuf::from(partial);
    let result = async {
        let mut response = client
            .get_download(&["exports", &export.id.to_string()])
            .await?;
        let mut file = tokio::fs::File::create(&partial)
            .await
            .with_context(|| format!("cannot create {}", partial.display()))?;
        let mut hasher = Sha256::new();
        let mut size_bytes = 0u64;
        while let Some(chunk) = response
            .chunk()
            .await
            .with_context(|| format!("the download of export {} broke off", export.id))?
        {
            hasher.update(&chunk);
            size_bytes += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .with_context(|| format!("cannot write {}", partial.display()))?;
        }
        file.sync_all()
            .await
            .with_context(|| format!("cannot write {}", partial.display()))?;
        drop(file);
        let files_verified = if export.compressed {
            if size_bytes != export.size_bytes {
                bail!(
                    "the download of export {} has {size_bytes} bytes, the export record says {}",
                    export.id,
                    export.size_bytes
                );
            }
            let (path, export_id) = (partial.clone(), export.id);
            tokio::task::spawn_blocking(move || verify_archive(&path, export_id))
                .await
                .context("the archive check did not finish")??
        } else {
            let bytes = tokio::fs::read(&partial)
                .await
                .with_context(|| format!("cannot read {}", partial.display()))?;
            let manifest: ExportManifest = serde_json::from_slice(&bytes)
                .context("the downloaded manifest is not an export manifest")?;
            check_manifest_id(&manifest, export.id)?;
            0
        };
        tokio::fs::rename(&partial, target)
            .await
            .with_context(|| format!("cannot move the download to {}", target.display()))?;
        Ok(Download {
            sha256: format!("{:x}", hasher.finalize()),
            files_verified,
        })
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    result
}

/// Checks every file the archive's manifest lists against its size and SHA-256; returns how
/// many there were.
fn verify_archive(path: &Path, export_id: Uuid) -> anyhow::Result<usize> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let (manifest, verified) =
        grokforge_actors::storage::export::verify_archive(std::io::BufReader::new(file))
            .with_context(|| {
                format!(
                    "the download {} is not what its manifest says",
                    path.display()
                )
            })?;
    check_manifest_id(&manifest, export_id)?;
    Ok(verified)
}

fn check_manifest_id(manifest: &ExportManifest, export_id: Uuid) -> anyhow::Result<()> {
    if manifest.export_id != export_id {
        bail!(
            "the downloaded package is export {}, not the requested {export_id}",
            manifest.export_id
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use grokforge_actors::storage::export::{ExportedFile, ExportedModel};

    use super::*;

    fn export(compressed: bool) -> ExportRecord {
        serde_json::from_value(serde_json::json!({
            "id": "01933b3e-0000-7000-8000-0000000000e1",
            "created_at": "2026-01-02T03:04:05Z",
            "path": "exports/01933b3e-0000-7000-8000-0000000000e1.zip",
            "model_ids": ["01933b3e-0000-7000-8000-0000000000a1"],
            "format": "all",
            "compressed": compressed,
            "size_bytes": 10,
        }))
        .unwrap()
    }

    /// A package like the node's: model files plus a manifest listing their checksums; the
    /// manifest claims `claimed` for `weights.bin`.
    fn archive(path: &Path, export_id: Uuid, weights: &[u8], claimed: &[u8]) {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("m/weights.bin", options).unwrap();
        zip.write_all(weights).unwrap();
        let (size_bytes, sha256) = (
            claimed.len() as u64,
            grokforge_actors::storage::artifacts::sha256_hex(claimed),
        );
        let manifest = serde_json::json!({
            "schema_version": 1,
            "export_id": export_id,
            "created_at": "2026-01-02T03:04:05Z",
            "format": "all",
            "compression": "deflate",
            "models": [ExportedModel {
                id: Uuid::nil(),
                name: "cognate-v0".into(),
                phase: "cognate".into(),
                version: 1,
                directory: "m".into(),
                sha256: sha256.clone(),
                files: vec![ExportedFile { path: "m/weights.bin".into(), size_bytes, sha256 }],
            }],
        });
        zip.start_file("export_manifest.json", options).unwrap();
        zip.write_all(manifest.to_string().as_bytes()).unwrap();
        zip.finish().unwrap();
    }

    #[test]
    fn archives_are_checked_file_by_file_against_their_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let id = export(true).id;
        let good = dir.path().join("good.zip");
        archive(&good, id, b"weights", b"weights");
        assert_eq!(verify_archive(&good, id).unwrap(), 1);

        let tampered = dir.path().join("tampered.zip");
        archive(&tampered, id, b"weightz", b"weights");
        let error = format!("{:#}", verify_archive(&tampered, id).unwrap_err());
        assert!(
            error.contains("m/weights.bin in the package has 7 bytes"),
            "{error}"
        );

        let error = verify_archive(&good, Uuid::nil()).unwrap_err().to_string();
        assert!(error.contains("not the requested"), "{error}");

        let not_zip = dir.path().join("page.html");
        std::fs::write(&not_zip, "<html>").unwrap();
        assert!(verify_archive(&not_zip, id).is_err());
    }

    #[test]
    fn downloads_are_named_from_the_export_id() {
        let dir = tempfile::tempdir().unwrap();
        let zipped = export(true);
        assert_eq!(
            download_target(None, &zipped),
            PathBuf::from(format!("grokforge-export-{}.zip", zipped.id))
        );
        assert_eq!(
            download_target(Some(dir.path()), &zipped),
            dir.path()
                .join(format!("grokforge-export-{}.zip", zipped.id))
        );
        let file = dir.path().join("mine.zip");
        assert_eq!(download_target(Some(&file), &zipped), file);
        let directory = export(false);
        assert_eq!(
            download_target(None, &directory),
            PathBuf::from(format!("grokforge-export-{}-manifest.json", directory.id))
        );
    }

    #[test]
    fn list_queries_carry_only_the_given_filters() {
        assert_eq!(
            list_query(Some("cognate".into()), None, Some("a b".into()), true),
            vec![
                ("phase", "cognate".to_string()),
                ("tag", "a b".to_string()),
                ("winner", "true".to_string())
            ]
        );
        assert!(list_query(None, None, None, false).is_empty());
    }
}
