//! The artifact store: model files and export packages under the artifacts directory.
//!
//! Layout, every path generated here from ids (never from a request):
//!
//! ```text
//! <artifacts>/models/<model-id>/<file>      files of one model, listed in its manifest
//! <artifacts>/exports/<export-id>.zip       an export package (or a directory <export-id>/)
//! <artifacts>/**/.tmp-*                     a write in progress, or one a crash cut short
//! ```
//!
//! Invariant: a file under its final name is complete and durable. Every write goes to a
//! `.tmp-` file in the destination directory, is fsynced, renamed over the final name (atomic
//! within one file system) and the directory is fsynced so the rename itself survives a power
//! cut. SHA-256 is computed from the bytes as they are written, and checked against the
//! manifest on every read: a truncated or altered file is an error naming the model, never
//! bytes. What a crash leaves behind (`.tmp-` files, a model directory whose database row was
//! never written) is invisible to readers and removed by [`ArtifactStore::gc`].
//!
//! Everything here is blocking `std::fs`; async callers go through `spawn_blocking`.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::StorageError;

pub const MODELS_DIR: &str = "models";
pub const EXPORTS_DIR: &str = "exports";
/// Prefix of every file or directory still being written.
pub const TEMP_PREFIX: &str = ".tmp-";

const COPY_BUFFER_BYTES: usize = 1 << 20;

/// Size and SHA-256 (lowercase hex) of a file as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub size_bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone)]
pub struct ArtifactStore {
    root: PathBuf,
}

impl ArtifactStore {
    pub fn new(root: impl Into<PathBuf>) -> ArtifactStore {
        ArtifactStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn models_dir(&self) -> PathBuf {
        self.root.join(MODELS_DIR)
    }

    pub fn exports_dir(&self) -> PathBuf {
        self.root.join(EXPORTS_DIR)
    }

    pub fn model_dir(&self, model_id: Uuid) -> PathBuf {
        self.models_dir().join(model_id.to_string())
    }

    /// Where a model file lives, relative to the artifacts directory (what the database
    /// records, so the directory can be mounted elsewhere on another node).
    pub fn model_file_relative(model_id: Uuid, file_name: &str) -> PathBuf {
        Path::new(MODELS_DIR)
            .join(model_id.to_string())
            .join(file_name)
    }

    /// Resolves a path the database recorded relative to the artifacts directory.
    pub fn resolve(&self, relative: &Path) -> PathBuf {
        self.root.join(relative)
    }

    /// Creates the directory layout.
    pub fn ensure_layout(&self) -> Result<(), StorageError> {
        for dir in [self.models_dir(), self.exports_dir()] {
            std::fs::create_dir_all(&dir).map_err(StorageError::io(&dir))?;
        }
        Ok(())
    }

    /// Starts writing one file of a model. Nothing is visible under `file_name` until
    /// [`PendingFile::commit`]; dropping the pending file removes the temp file, and a crash
    /// leaves only a `.tmp-` file for [`gc`](Self::gc).
    pub fn begin_model_file(
        &self,
        model_id: Uuid,
        file_name: &str,
    ) -> Result<PendingFile, StorageError> {
        validate_file_name(file_name)?;
        let dir = self.model_dir(model_id);
        if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(StorageError::io(&dir))?;
            // The new directory entry must be durable before files inside it are.
            sync_dir(&self.models_dir())?;
        }
        PendingFile::create(&dir, file_name)
    }

    /// Writes every file of a model, each atomically, and returns their digests in order.
    /// On error the files already written are left for the caller to remove with
    /// [`remove_model`](Self::remove_model).
    pub fn write_model_files(
        &self,
        model_id: Uuid,
        files: &[(String, &[u8])],
    ) -> Result<Vec<FileDigest>, StorageError> {
        let mut digests = Vec::with_capacity(files.len());
        for (name, bytes) in files {
            let mut pending = self.begin_model_file(model_id, name)?;
            pending.write_bytes(bytes)?;
            digests.push(pending.commit()?);
        }
        Ok(digests)
    }

    /// Reads a model file whole, refusing it unless its size and SHA-256 match `expected`.
    pub fn read_verified(
        &self,
        model_id: Uuid,
        file_name: &str,
        expected: &FileDigest,
    ) -> Result<Vec<u8>, StorageError> {
        let mut bytes = Vec::with_capacity(usize::try_from(expected.size_bytes).unwrap_or(0));
        self.copy_verified(model_id, file_name, expected, &mut bytes)?;
        Ok(bytes)
    }

    /// Streams a model file into `sink` while hashing it; fails naming the model when the
    /// file is missing or its size or SHA-256 differ from `expected`. The sink may then hold
    /// bad bytes: callers write into something they discard on error (a temp file, a buffer).
    pub fn copy_verified(
        &self,
        model_id: Uuid,
        file_name: &str,
        expected: &FileDigest,
        sink: &mut dyn Write,
    ) -> Result<(), StorageError> {
        let corrupt = |reason: String| StorageError::ArtifactCorrupt {
            model_id,
            file: file_name.to_owned(),
            reason,
        };
        let path = self.model_dir(model_id).join(file_name);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(corrupt(format!("{} is missing", path.display())));
            }
            Err(e) => return Err(StorageError::io(&path)(e)),
        };
        let on_disk = file.metadata().map_err(StorageError::io(&path))?.len();
        if on_disk != expected.size_bytes {
            return Err(corrupt(format!(
                "size is {on_disk} bytes, the manifest says {}",
                expected.size_bytes
            )));
        }
        let digest = copy_hashing(&mut file, sink).map_err(StorageError::io(&path))?;
        if digest.size_bytes != expected.size_bytes || digest.sha256 != expected.sha256 {
            return Err(corrupt(format!(
                "sha256 is {} ({} bytes), the manifest says {} ({} bytes)",
                digest.sha256, digest.size_bytes, expected.sha256, expected.size_bytes
            )));
        }
        Ok(())
    }

    /// Removes every file of a model. A model without files is not an error.
    pub fn remove_model(&self, model_id: Uuid) -> Result<(), StorageError> {
        let dir = self.model_dir(model_id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => sync_dir(&self.models_dir()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io(dir)(e)),
        }
    }

    /// Removes an export package (a zip file or a directory), if present.
    pub fn remove_export(&self, relative: &Path) -> Result<(), StorageError> {
        let path = self.resolve(relative);
        remove_path(&path).map_err(StorageError::io(&path))
    }

    /// Removes what no database row accounts for: model directories of unknown models, files
    /// a model's manifest does not list, `.tmp-` leftovers, and export packages that are not
    /// in `live_exports` (their id is expired or unknown). Anything younger than
    /// `options.min_age` is kept, so a save or export in flight on another node is never
    /// collected. Entries whose name this store could not have generated are left alone.
    pub fn gc(
        &self,
        live_models: &HashMap<Uuid, HashSet<String>>,
        live_exports: &HashSet<Uuid>,
        expired_exports: &HashSet<Uuid>,
        options: &GcOptions,
    ) -> Result<GcReport, StorageError> {
        let mut report = GcReport::default();
        let old_enough = |path: &Path| -> bool {
            let modified = std::fs::symlink_metadata(path).and_then(|m| m.modified());
            match modified {
                Ok(modified) => options
                    .now
                    .duration_since(modified)
                    .is_ok_and(|age| age >= options.min_age),
                Err(_) => false,
            }
        };

        for entry in read_dir_if_exists(&self.models_dir())? {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TEMP_PREFIX) {
                if old_enough(&path) {
                    report.remove(path, GcReason::TempFile, options.dry_run)?;
                }
                continue;
            }
            let Ok(model_id) = Uuid::parse_str(&name) else {
                continue;
            };
            match live_models.get(&model_id) {
                None => {
                    if old_enough(&path) {
                        report.remove(path, GcReason::OrphanModel, options.dry_run)?;
                    }
                }
                Some(files) => {
                    for file in read_dir_if_exists(&path)? {
                        let file_path = file.path();
                        let file_name = file.file_name().to_string_lossy().into_owned();
                        if files.contains(&file_name) || !old_enough(&file_path) {
                            continue;
                        }
                        let reason = if file_name.starts_with(TEMP_PREFIX) {
                            GcReason::TempFile
                        } else {
                            GcReason::UnlistedFile
                        };
                        report.remove(file_path, reason, options.dry_run)?;
                    }
                }
            }
        }

        for entry in read_dir_if_exists(&self.exports_dir())? {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TEMP_PREFIX) {
                if old_enough(&path) {
                    report.remove(path, GcReason::TempFile, options.dry_run)?;
                }
                continue;
            }
            let Ok(export_id) = Uuid::parse_str(name.strip_suffix(".zip").unwrap_or(&name)) else {
                continue;
            };
            if live_exports.contains(&export_id) {
                continue;
            }
            if expired_exports.contains(&export_id) {
                report.remove(path, GcReason::ExpiredExport, options.dry_run)?;
            } else if old_enough(&path) {
                report.remove(path, GcReason::OrphanExport, options.dry_run)?;
            }
        }
        if !options.dry_run && !report.removed.is_empty() {
            sync_dir(&self.models_dir()).ok();
            sync_dir(&self.exports_dir()).ok();
        }
        Ok(report)
    }
}

/// What [`ArtifactStore::gc`] may remove.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Entries younger than this are kept: they may belong to a write still in flight.
    pub min_age: Duration,
    /// Export packages older than this are removed with their records; `None` keeps them.
    pub export_max_age: Option<Duration>,
    /// Report what would be removed without removing it.
    pub dry_run: bool,
    /// The clock gc measures ages against.
    pub now: SystemTime,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            min_age: Duration::from_secs(15 * 60),
            export_max_age: None,
            dry_run: false,
            now: SystemTime::now(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GcReason {
    /// A `.tmp-` file or directory: a write that never finished.
    TempFile,
    /// A model directory with no model record.
    OrphanModel,
    /// A file in a model's directory that its manifest does not list.
    UnlistedFile,
    /// An export package with no export record.
    OrphanExport,
    /// An export package older than the configured maximum age.
    ExpiredExport,
    /// An export record whose package is gone (the record is removed).
    ExportRecordWithoutPackage,
}

impl GcReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GcReason::TempFile => "temp_file",
            GcReason::OrphanModel => "orphan_model",
            GcReason::UnlistedFile => "unlisted_file",
            GcReason::OrphanExport => "orphan_export",
            GcReason::ExpiredExport => "expired_export",
            GcReason::ExportRecordWithoutPackage => "export_record_without_package",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcRemoval {
    pub path: PathBuf,
    pub reason: GcReason,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub removed: Vec<GcRemoval>,
    pub dry_run: bool,
}

impl GcReport {
    pub fn removed_bytes(&self) -> u64 {
        self.removed.iter().map(|r| r.size_bytes).sum()
    }

    pub(crate) fn remove(
        &mut self,
        path: PathBuf,
        reason: GcReason,
        dry_run: bool,
    ) -> Result<(), StorageError> {
        let size_bytes = path_size(&path);
        if !dry_run {
            remove_path(&path).map_err(StorageError::io(&path))?;
        }
        tracing::info!(path = %path.display(), reason = reason.as_str(), size_bytes, dry_run, "gc removed");
        self.dry_run = dry_run;
        self.removed.push(GcRemoval {
            path,
            reason,
            size_bytes,
        });
        Ok(())
    }
}

/// A file being written: bytes go to a `.tmp-` file beside the destination and into the
/// running SHA-256; [`commit`](Self::commit) makes it durable and visible.
pub struct PendingFile {
    temp: tempfile::NamedTempFile,
    hasher: Sha256,
    size_bytes: u64,
    target: PathBuf,
}

impl PendingFile {
    /// Starts a file that will appear as `dir/name`.
    pub fn create(dir: &Path, name: &str) -> Result<PendingFile, StorageError> {
        let temp = tempfile::Builder::new()
            .prefix(&format!("{TEMP_PREFIX}{name}-"))
            .tempfile_in(dir)
            .map_err(StorageError::io(dir))?;
        Ok(PendingFile {
            temp,
            hasher: Sha256::new(),
            size_bytes: 0,
            target: dir.join(name),
        })
    }

    pub fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.write_all(bytes)
            .map_err(StorageError::io(self.temp.path()))
    }

    /// Bytes written so far.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Where the bytes are until [`commit`](Self::commit).
    pub fn temp_path(&self) -> &Path {
        self.temp.path()
    }

    /// Flushes and fsyncs the temp file (so it can be read back whole and validated before it
    /// is committed) and returns the digest of what was written.
    pub fn sync(&mut self) -> Result<FileDigest, StorageError> {
        let temp_path = self.temp.path().to_path_buf();
        self.temp.flush().map_err(StorageError::io(&temp_path))?;
        self.temp
            .as_file()
            .sync_all()
            .map_err(StorageError::io(&temp_path))?;
        Ok(FileDigest {
            size_bytes: self.size_bytes,
            sha256: hex(&self.hasher.clone().finalize()),
        })
    }

    /// Where the file will appear.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// fsync, rename into place, fsync the directory; returns what was written.
    pub fn commit(mut self) -> Result<FileDigest, StorageError> {
        let temp_path = self.temp.path().to_path_buf();
        self.temp.flush().map_err(StorageError::io(&temp_path))?;
        self.temp
            .as_file()
            .sync_all()
            .map_err(StorageError::io(&temp_path))?;
        let digest = FileDigest {
            size_bytes: self.size_bytes,
            sha256: hex(&self.hasher.finalize()),
        };
        self.temp
            .persist(&self.target)
            .map_err(|e| StorageError::io(&self.target)(e.error))?;
        if let Some(dir) = self.target.parent() {
            sync_dir(dir)?;
        }
        Ok(digest)
    }
}

impl Write for PendingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.temp.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.size_bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.temp.flush()
    }
}

/// A writer that hashes what passes through it on the way to `inner`.
pub(crate) struct HashingWriter<W> {
    pub inner: W,
    hasher: Sha256,
    size_bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            size_bytes: 0,
        }
    }

    pub fn digest(&self) -> FileDigest {
        FileDigest {
            size_bytes: self.size_bytes,
            sha256: hex(&self.hasher.clone().finalize()),
        }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.size_bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Copies `reader` into `sink`, returning the digest of what was read.
fn copy_hashing(reader: &mut dyn Read, sink: &mut dyn Write) -> std::io::Result<FileDigest> {
    let mut hasher = Sha256::new();
    let mut size_bytes = 0u64;
    let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..read]);
        sink.write_all(&buffer[..read])?;
        size_bytes += read as u64;
    }
    Ok(FileDigest {
        size_bytes,
        sha256: hex(&hasher.finalize()),
    })
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// A file name the store accepts: one path component of `[A-Za-z0-9._-]`, not starting with
/// a dot (so it can never be `..`, hidden, or collide with a `.tmp-` file), at most 128 bytes.
pub fn validate_file_name(name: &str) -> Result<(), StorageError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StorageError::invalid(
            "file name",
            format!("`{name}`: use 1 to 128 of A-Z a-z 0-9 . _ -, not starting with a dot"),
        ))
    }
}

/// fsync a directory, so renames and new entries in it survive a power cut.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StorageError::io(dir))
}

fn read_dir_if_exists(dir: &Path) -> Result<Vec<std::fs::DirEntry>, StorageError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .collect::<Result<Vec<_>, _>>()
            .map_err(StorageError::io(dir)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(StorageError::io(dir)(e)),
    }
}

fn remove_path(path: &Path) -> std::io::Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn path_size(path: &Path) -> u64 {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::read_dir(path)
            .map(|entries| entries.flatten().map(|e| path_size(&e.path())).sum())
            .unwrap_or(0),
        Ok(meta) => meta.len(),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_a_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn committed_file_has_the_digest_of_its_bytes_and_no_temp_remains() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(dir.path());
        let id = Uuid::now_v7();
        let digests = store
            .write_model_files(id, &[("weights.bin".into(), b"hello" as &[u8])])
            .unwrap();
        assert_eq!(digests[0].sha256, sha256_hex(b"hello"));
        assert_eq!(digests[0].size_bytes, 5);
        let names: Vec<_> = std::fs::read_dir(store.model_dir(id))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["weights.bin"]);
        let bytes = store.read_verified(id, "weights.bin", &digests[0]).unwrap();
        assert_eq!(bytes, b"hello");
    }

    #[test]
    fn a_dropped_pending_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(dir.path());
        let id = Uuid::now_v7();
        let mut pending = store.begin_model_file(id, "weights.bin").unwrap();
        pending.write_bytes(b"half").unwrap();
        drop(pending);
        assert_eq!(std::fs::read_dir(store.model_dir(id)).unwrap().count(), 0);
    }

    #[test]
    fn file_names_that_could_escape_or_hide_are_refused() {
        for bad in ["", "..", "../x", "a/b", ".tmp-x", ".hidden", "a b", "é"] {
            assert!(validate_file_name(bad).is_err(), "{bad:?}");
        }
        for good in ["model.safetensors", "model.mpk", "config-v2_final.json"] {
            validate_file_name(good).unwrap();
        }
    }
}
