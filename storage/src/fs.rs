//! The data directory on disk.

use std::io::Write;
use std::path::Path;

use crate::StorageError;

/// Proves `dir` is writable the way the artifact store writes: create a file, write, fsync,
/// remove. A read-only mount or a full disk fails here rather than at the first checkpoint.
pub fn probe_writable(dir: &Path) -> Result<(), StorageError> {
    let io = |source| StorageError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut probe = tempfile::Builder::new()
        .prefix(".health-probe-")
        .tempfile_in(dir)
        .map_err(io)?;
    probe.write_all(b"ok").map_err(io)?;
    probe.as_file().sync_all().map_err(io)?;
    probe.close().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_dir_passes_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        probe_writable(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_file_in_place_of_the_dir_fails_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, b"x").unwrap();
        let error = probe_writable(&not_a_dir).unwrap_err().to_string();
        assert!(error.contains("file"), "{error}");
    }
}
