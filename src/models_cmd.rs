//! `grokforge models …`: the model registry of the local data dir, without a running node.
//!
//! Opens the same database and artifact store a node of this configuration uses, runs one
//! registry call on a short-lived tokio runtime and prints the result: a table for `list`, the
//! verified record as JSON for `show`, the package path for `export`, and what `gc` removed.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use grokforge_actors::storage::{
    ArtifactStore, Compression, Database, DatabaseTarget, ExportFormat, GcOptions, ModelFilter,
    ModelRecord, ModelRegistry,
};
use grokforge_config::{ConfigManager, DatabaseKind, Settings};
use uuid::Uuid;

#[derive(clap::Args)]
pub struct ModelsArgs {
    /// TOML configuration file (defaults → this file → GROKFORGE__SECTION__KEY variables).
    #[arg(long, env = "GROKFORGE_CONFIG")]
    config: Option<PathBuf>,
    /// The node's data dir (database, artifacts, exports).
    #[arg(long)]
    data_dir: Option<PathBuf>,
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
    /// Package models for PyTorch / Hugging Face users under `<artifacts>/exports/`.
    Export {
        /// Model ids.
        #[arg(required = true)]
        ids: Vec<Uuid>,
        /// Which files of each model go in (config and metadata always do).
        #[arg(long, value_enum, default_value_t = FormatArg::All)]
        format: FormatArg,
        /// Write a directory instead of a zip archive.
        #[arg(long)]
        no_compress: bool,
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

/// Runs one `models` subcommand against the local registry.
pub fn run(args: ModelsArgs) -> anyhow::Result<()> {
    let settings = load_settings(&args)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(execute(settings, args.command))
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
            print_table(&registry.list(&filter).await?);
        }
        ModelsCommand::Show { id } => {
            let model = registry.verify(id).await?;
            println!("{}", serde_json::to_string_pretty(&model)?);
        }
        ModelsCommand::Export {
            ids,
            format,
            no_compress,
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

fn print_table(models: &[ModelRecord]) {
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
    let header = [
        "ID", "NAME", "VERSION", "PHASE", "WINNER", "SIZE", "TAGS", "CREATED",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
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
