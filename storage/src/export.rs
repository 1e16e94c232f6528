//! Export packages: models with their config, metadata and a checksummed manifest, as one zip
//! under `<artifacts>/exports/<export-id>.zip`, or a directory `<artifacts>/exports/<export-id>/`
//! when compression is off.
//!
//! Package layout (every path generated here):
//!
//! ```text
//! export_manifest.json                  export id, created_at, models, every file's sha256
//! <name>-v<version>/<model files>       e.g. model.safetensors, model.mpk
//! <name>-v<version>/config.json         the model's config
//! <name>-v<version>/metadata.json       the model's registry record
//! ```
//!
//! Invariant: nothing is half-written. Unknown ids are refused before anything touches the
//! disk; the package is built under a `.tmp-` name in the exports directory and renamed into
//! place only once complete and fsynced; the export record is inserted last. Model files are
//! verified against their manifests while they are copied, so a corrupt file fails the export
//! naming its model instead of shipping bad weights.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use uuid::Uuid;

use crate::artifacts::{ArtifactStore, FileDigest, HashingWriter, TEMP_PREFIX, sync_dir};
use crate::db::with_pool;
use crate::models::{ModelFile, ModelRecord, ModelRegistry, now_micros};
use crate::{StorageError, blocking};

/// Version of `export_manifest.json`'s layout.
pub const EXPORT_MANIFEST_VERSION: u32 = 1;
pub const EXPORT_MANIFEST_FILE: &str = "export_manifest.json";

/// Which of a model's files go into the package (its config and metadata always do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// Every file the model was saved with (Burn record, safetensors, …).
    All,
    /// Only the primary file.
    Primary,
    /// Only `.safetensors` files, for PyTorch / Hugging Face users; a model without one is
    /// refused by id.
    Safetensors,
}

impl ExportFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::All => "all",
            ExportFormat::Primary => "primary",
            ExportFormat::Safetensors => "safetensors",
        }
    }

    pub fn parse(s: &str) -> Result<ExportFormat, StorageError> {
        match s {
            "all" => Ok(ExportFormat::All),
            "primary" => Ok(ExportFormat::Primary),
            "safetensors" => Ok(ExportFormat::Safetensors),
            other => Err(StorageError::invalid(
                "format",
                format!("`{other}`; expected all, primary or safetensors"),
            )),
        }
    }

    fn select(self, model: &ModelRecord) -> Result<Vec<&ModelFile>, StorageError> {
        let files: Vec<&ModelFile> = match self {
            ExportFormat::All => model.files.iter().collect(),
            ExportFormat::Primary => vec![model.primary_file()],
            ExportFormat::Safetensors => model
                .files
                .iter()
                .filter(|f| f.name.ends_with(".safetensors"))
                .collect(),
        };
        if files.is_empty() {
            return Err(StorageError::invalid(
                "format",
                format!("model {} has no {} file", model.id, self.as_str()),
            ));
        }
        Ok(files)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// A plain directory.
    None,
    /// A zip archive, deflated.
    Deflate,
}

/// An export package as recorded in the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExportRecord {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    /// Relative to the artifacts directory: `exports/<id>.zip` or `exports/<id>`.
    pub path: String,
    pub model_ids: Vec<Uuid>,
    pub format: ExportFormat,
    pub compressed: bool,
    pub size_bytes: u64,
}

/// `export_manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExportManifest {
    pub schema_version: u32,
    pub export_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub format: ExportFormat,
    pub compression: Compression,
    pub models: Vec<ExportedModel>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExportedModel {
    pub id: Uuid,
    pub name: String,
    pub phase: String,
    pub version: u32,
    /// The model's directory inside the package.
    pub directory: String,
    /// The registry's checksum of the model's primary file.
    pub sha256: String,
    /// Every file of this model in the package, paths relative to the package root.
    pub files: Vec<ExportedFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExportedFile {
    pub path: String,
    pub size_bytes: u64,
    pub sha256: String,
}

/// Why a package does not hold what its manifest lists.
#[derive(Debug, thiserror::Error)]
pub enum PackageMismatch {
    #[error("not a zip archive: {0}")]
    NotZip(String),
    #[error("the package has no {EXPORT_MANIFEST_FILE}")]
    NoManifest,
    #[error("the package's {EXPORT_MANIFEST_FILE} is unreadable: {0}")]
    BadManifest(String),
    #[error("the package lacks {0}, which its manifest lists")]
    Missing(String),
    #[error("cannot read {path} from the package: {error}")]
    Unreadable { path: String, error: String },
    #[error(
        "{path} in the package has {size_bytes} bytes with SHA-256 {sha256}; the manifest says \
         {listed_bytes} bytes with {listed_sha256}"
    )]
    Differs {
        path: String,
        size_bytes: u64,
        sha256: String,
        listed_bytes: u64,
        listed_sha256: String,
    },
}

/// Checks every file an export archive's manifest lists against its size and SHA-256, the
/// way a client checks a download before trusting it. Returns the manifest and how many files
/// were checked.
pub fn verify_archive(
    reader: impl std::io::Read + std::io::Seek,
) -> Result<(ExportManifest, usize), PackageMismatch> {
    use sha2::Digest;
    let mut archive =
        zip::ZipArchive::new(reader).map_err(|e| PackageMismatch::NotZip(e.to_string()))?;
    let manifest: ExportManifest = {
        let entry = archive
            .by_name(EXPORT_MANIFEST_FILE)
            .map_err(|_| PackageMismatch::NoManifest)?;
        serde_json::from_reader(entry).map_err(|e| PackageMismatch::BadManifest(e.to_string()))?
    };
    let mut verified = 0;
    for listed in manifest.models.iter().flat_map(|model| &model.files) {
        let mut entry = archive
            .by_name(&listed.path)
            .map_err(|_| PackageMismatch::Missing(listed.path.clone()))?;
        let mut hasher = sha2::Sha256::new();
        let size_bytes =
            std::io::copy(&mut entry, &mut hasher).map_err(|e| PackageMismatch::Unreadable {
                path: listed.path.clone(),
                error: e.to_string(),
            })?;
        let sha256 = crate::artifacts::hex(&hasher.finalize());
        if size_bytes != listed.size_bytes || sha256 != listed.sha256 {
            return Err(PackageMismatch::Differs {
                path: listed.path.clone(),
                size_bytes,
                sha256,
                listed_bytes: listed.size_bytes,
                listed_sha256: listed.sha256.clone(),
            });
        }
        verified += 1;
    }
    Ok((manifest, verified))
}

#[derive(sqlx::FromRow)]
struct ExportRow {
    id: Uuid,
    created_at: DateTime<Utc>,
    path: String,
    model_ids: Json<Vec<Uuid>>,
    format: String,
    compressed: bool,
    size_bytes: i64,
}

impl TryFrom<ExportRow> for ExportRecord {
    type Error = sqlx::Error;

    fn try_from(row: ExportRow) -> Result<Self, sqlx::Error> {
        Ok(ExportRecord {
            id: row.id,
            created_at: row.created_at,
            path: row.path,
            model_ids: row.model_ids.0,
            format: ExportFormat::parse(&row.format)
                .map_err(|e| sqlx::Error::Decode(e.to_string().into()))?,
            compressed: row.compressed,
            size_bytes: u64::try_from(row.size_bytes).unwrap_or(0),
        })
    }
}

/// Where packages go while they are built: one file or directory, written and then renamed.
trait PackageWriter {
    fn add(
        &mut self,
        path: &str,
        write: &mut dyn FnMut(&mut dyn Write) -> Result<(), StorageError>,
    ) -> Result<FileDigest, StorageError>;
    /// Makes everything durable; returns the package's size.
    fn finish(self: Box<Self>) -> Result<u64, StorageError>;
}

struct DirectoryPackage {
    root: PathBuf,
    dirs: Vec<PathBuf>,
    size_bytes: u64,
}

impl PackageWriter for DirectoryPackage {
    fn add(
        &mut self,
        path: &str,
        write: &mut dyn FnMut(&mut dyn Write) -> Result<(), StorageError>,
    ) -> Result<FileDigest, StorageError> {
        let target = self.root.join(path);
        if let Some(parent) = target.parent()
            && !self.dirs.iter().any(|d| d == parent)
        {
            std::fs::create_dir_all(parent).map_err(StorageError::io(parent))?;
            self.dirs.push(parent.to_path_buf());
        }
        let file = File::create(&target).map_err(StorageError::io(&target))?;
        let mut out = HashingWriter::new(BufWriter::new(file));
        write(&mut out)?;
        let digest = out.digest();
        let file = out
            .inner
            .into_inner()
            .map_err(|e| StorageError::io(&target)(e.into_error()))?;
        file.sync_all().map_err(StorageError::io(&target))?;
        self.size_bytes += digest.size_bytes;
        Ok(digest)
    }

    fn finish(self: Box<Self>) -> Result<u64, StorageError> {
        for dir in &self.dirs {
            sync_dir(dir)?;
        }
        sync_dir(&self.root)?;
        Ok(self.size_bytes)
    }
}

struct ZipPackage {
    path: PathBuf,
    zip: zip::ZipWriter<BufWriter<File>>,
}

impl PackageWriter for ZipPackage {
    fn add(
        &mut self,
        path: &str,
        write: &mut dyn FnMut(&mut dyn Write) -> Result<(), StorageError>,
    ) -> Result<FileDigest, StorageError> {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            // Model files may pass 4 GiB; zip64 costs a few bytes for small ones.
            .large_file(true);
        self.zip
            .start_file(path, options)
            .map_err(|source| StorageError::Zip {
                path: self.path.clone(),
                source,
            })?;
        let mut out = HashingWriter::new(&mut self.zip);
        write(&mut out)?;
        Ok(out.digest())
    }

    fn finish(self: Box<Self>) -> Result<u64, StorageError> {
        let path = self.path;
        let writer = self.zip.finish().map_err(|source| StorageError::Zip {
            path: path.clone(),
            source,
        })?;
        let file = writer
            .into_inner()
            .map_err(|e| StorageError::io(&path)(e.into_error()))?;
        file.sync_all().map_err(StorageError::io(&path))?;
        Ok(file.metadata().map_err(StorageError::io(&path))?.len())
    }
}

fn to_json(what: &str, value: &impl Serialize) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec_pretty(value).map_err(|source| StorageError::Json {
        what: what.to_owned(),
        source,
    })
}

/// Writes the whole package under a temp name; returns (temp path, size).
fn write_package(
    store: &ArtifactStore,
    temp: &Path,
    manifest_head: ExportManifest,
    models: &[ModelRecord],
) -> Result<u64, StorageError> {
    let mut package: Box<dyn PackageWriter> = match manifest_head.compression {
        Compression::None => {
            std::fs::create_dir(temp).map_err(StorageError::io(temp))?;
            Box::new(DirectoryPackage {
                root: temp.to_path_buf(),
                dirs: Vec::new(),
                size_bytes: 0,
            })
        }
        Compression::Deflate => {
            let file = File::create_new(temp).map_err(StorageError::io(temp))?;
            Box::new(ZipPackage {
                path: temp.to_path_buf(),
                zip: zip::ZipWriter::new(BufWriter::new(file)),
            })
        }
    };

    let mut manifest = manifest_head;
    for model in models {
        let directory = format!("{}-v{}", model.name, model.version);
        let mut files = Vec::new();
        for file in manifest.format.select(model)? {
            let path = format!("{directory}/{}", file.name);
            let expected = file.digest();
            let digest = package.add(&path, &mut |out| {
                store.copy_verified(model.id, &file.name, &expected, out)
            })?;
            files.push(ExportedFile {
                path,
                size_bytes: digest.size_bytes,
                sha256: digest.sha256,
            });
        }
        for (name, bytes) in [
            ("config.json", to_json("config.json", &model.config)?),
            ("metadata.json", to_json("metadata.json", model)?),
        ] {
            let path = format!("{directory}/{name}");
            let digest = package.add(&path, &mut |out| {
                out.write_all(&bytes).map_err(StorageError::io(temp))
            })?;
            files.push(ExportedFile {
                path,
                size_bytes: digest.size_bytes,
                sha256: digest.sha256,
            });
        }
        manifest.models.push(ExportedModel {
            id: model.id,
            name: model.name.clone(),
            phase: model.phase.clone(),
            version: model.version,
            directory,
            sha256: model.sha256.clone(),
            files,
        });
    }
    let manifest_bytes = to_json(EXPORT_MANIFEST_FILE, &manifest)?;
    package.add(EXPORT_MANIFEST_FILE, &mut |out| {
        out.write_all(&manifest_bytes)
            .map_err(StorageError::io(temp))
    })?;
    package.finish()
}

/// Builds the package and renames it into place; on failure leaves nothing behind.
fn build_package(
    store: &ArtifactStore,
    manifest_head: ExportManifest,
    models: &[ModelRecord],
) -> Result<(String, u64), StorageError> {
    let exports_dir = store.exports_dir();
    std::fs::create_dir_all(&exports_dir).map_err(StorageError::io(&exports_dir))?;
    let id = manifest_head.export_id;
    let final_name = match manifest_head.compression {
        Compression::None => id.to_string(),
        Compression::Deflate => format!("{id}.zip"),
    };
    let temp = exports_dir.join(format!("{TEMP_PREFIX}{final_name}"));
    let target = exports_dir.join(&final_name);

    let result = write_package(store, &temp, manifest_head, models).and_then(|size| {
        std::fs::rename(&temp, &target).map_err(StorageError::io(&target))?;
        sync_dir(&exports_dir)?;
        Ok(size)
    });
    match result {
        Ok(size) => Ok((
            format!("{}/{final_name}", crate::artifacts::EXPORTS_DIR),
            size,
        )),
        Err(error) => {
            let cleanup = if temp.is_dir() {
                std::fs::remove_dir_all(&temp)
            } else {
                std::fs::remove_file(&temp)
            };
            if let Err(e) = cleanup
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %temp.display(), error = %e, "cannot remove partial export; gc will");
            }
            Err(error)
        }
    }
}

impl ModelRegistry {
    /// Packages `ids` under `<artifacts>/exports/<export-id>[.zip]` and records the export.
    /// Unknown ids are refused, all of them named, before anything is written.
    pub async fn export_models(
        &self,
        ids: &[Uuid],
        format: ExportFormat,
        compression: Compression,
    ) -> Result<ExportRecord, StorageError> {
        if ids.is_empty() {
            return Err(StorageError::invalid(
                "model_ids",
                "name at least one model",
            ));
        }
        let mut unique = Vec::with_capacity(ids.len());
        for &id in ids {
            if !unique.contains(&id) {
                unique.push(id);
            }
        }
        let models = self.get_many(&unique).await?;
        for model in &models {
            format.select(model)?;
        }

        let export_id = Uuid::now_v7();
        let created_at = now_micros();
        let manifest_head = ExportManifest {
            schema_version: EXPORT_MANIFEST_VERSION,
            export_id,
            created_at,
            format,
            compression,
            models: Vec::new(),
        };
        let store = self.store.clone();
        let (path, size_bytes) =
            blocking(move || build_package(&store, manifest_head, &models)).await?;

        let record = ExportRecord {
            id: export_id,
            created_at,
            path,
            model_ids: unique,
            format,
            compressed: compression != Compression::None,
            size_bytes,
        };
        let inserted: Result<(), sqlx::Error> = with_pool!(&self.db, |pool| {
            sqlx::query(
                "INSERT INTO exports (id, created_at, path, model_ids, format, compressed, \
                 size_bytes) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(record.id)
            .bind(record.created_at)
            .bind(&record.path)
            .bind(Json(&record.model_ids))
            .bind(record.format.as_str())
            .bind(record.compressed)
            .bind(record.size_bytes as i64)
            .execute(pool)
            .await
            .map(|_| ())
        });
        if let Err(error) = inserted {
            let store = self.store.clone();
            let path = PathBuf::from(&record.path);
            let _ = blocking(move || store.remove_export(&path)).await;
            return Err(self.db.error(error));
        }
        tracing::info!(export_id = %record.id, path = %record.path, models = record.model_ids.len(), size_bytes, "export written");
        Ok(record)
    }

    pub async fn find_export(&self, id: Uuid) -> Result<Option<ExportRecord>, StorageError> {
        let row: Result<Option<ExportRow>, sqlx::Error> = with_pool!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT id, created_at, path, model_ids, format, compressed, size_bytes \
                 FROM exports WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await
        });
        row.and_then(|row| row.map(ExportRecord::try_from).transpose())
            .map_err(|e| self.db.error(e))
    }

    pub async fn get_export(&self, id: Uuid) -> Result<ExportRecord, StorageError> {
        self.find_export(id)
            .await?
            .ok_or(StorageError::ExportNotFound { id })
    }

    /// Every export, newest first.
    pub async fn list_exports(&self) -> Result<Vec<ExportRecord>, StorageError> {
        let rows: Result<Vec<ExportRow>, sqlx::Error> = with_pool!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT id, created_at, path, model_ids, format, compressed, size_bytes \
                 FROM exports ORDER BY created_at DESC, id DESC",
            )
            .fetch_all(pool)
            .await
        });
        rows.and_then(|rows| rows.into_iter().map(ExportRecord::try_from).collect())
            .map_err(|e| self.db.error(e))
    }

    /// The absolute path of an export's package.
    pub fn export_path(&self, export: &ExportRecord) -> PathBuf {
        self.store.resolve(Path::new(&export.path))
    }

    /// Deletes an export's record, then its package.
    pub async fn delete_export(&self, id: Uuid) -> Result<ExportRecord, StorageError> {
        let record = self.get_export(id).await?;
        self.delete_export_record(id).await?;
        let store = self.store.clone();
        let path = PathBuf::from(&record.path);
        blocking(move || store.remove_export(&path)).await?;
        Ok(record)
    }

    pub(crate) async fn delete_export_record(&self, id: Uuid) -> Result<(), StorageError> {
        let result: Result<(), sqlx::Error> = with_pool!(&self.db, |pool| {
            sqlx::query("DELETE FROM exports WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await
                .map(|_| ())
        });
        result.map_err(|e| self.db.error(e))
    }
}
