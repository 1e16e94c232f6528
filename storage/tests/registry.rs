//! The model registry against real databases (a SQLite file, a PostgreSQL schema) and a real
//! artifacts directory: every body runs on both.

mod common;

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{new_model, registry, weights};
use grokforge_storage::artifacts::sha256_hex;
use grokforge_storage::export::{EXPORT_MANIFEST_FILE, ExportManifest};
use grokforge_storage::{
    ArtifactStore, Compression, Database, ExportFormat, GcOptions, GcReason, ModelFilter,
    StorageError,
};
use uuid::Uuid;

on_both!(
    concurrent_saves_of_one_name_get_versions_1_to_8,
    lineage_and_metadata_round_trip,
    one_winner_per_phase,
    one_winner_per_phase_under_concurrent_marks,
    the_database_refuses_a_second_winner,
    list_filters_by_phase_name_tag_and_winner,
    handoffs_are_recorded_and_checked,
    a_crash_mid_write_leaves_no_visible_model_and_gc_removes_the_rest,
    a_corrupted_or_truncated_file_is_refused_naming_the_model,
    delete_removes_the_record_and_the_files,
    zip_export_manifest_lists_every_file_with_its_checksum,
    directory_export_matches_the_registry,
    export_of_unknown_ids_names_them_and_writes_nothing,
    gc_removes_orphan_and_expired_exports,
    invalid_saves_are_refused_before_anything_is_written,
);

fn no_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut entries| entries.next().is_none())
}

async fn concurrent_saves_of_one_name_get_versions_1_to_8(db: Database, artifacts: PathBuf) {
    let registry = registry(db, artifacts);
    let saves: Vec<_> = (0..8)
        .map(|_| {
            let registry = registry.clone();
            tokio::spawn(async move { registry.save(new_model("cognate-a", "cognate")).await })
        })
        .collect();
    let mut versions = Vec::new();
    for save in saves {
        versions.push(save.await.unwrap().unwrap().version);
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=8).collect::<Vec<u32>>());

    let other = registry
        .save(new_model("cognate-b", "cognate"))
        .await
        .unwrap();
    assert_eq!(other.version, 1, "versions count per name");
}

async fn lineage_and_metadata_round_trip(db: Database, artifacts: PathBuf) {
    let registry = registry(db, artifacts);
    let a = registry
        .save(new_model("parent-a", "cognate"))
        .await
        .unwrap();
    let b = registry
        .save(new_model("parent-b", "cognate"))
        .await
        .unwrap();
    let job_id = Uuid::now_v7();
    let mut child = new_model("merged", "evomerge");
    child.parent_ids = vec![b.id, a.id, b.id];
    child.job_id = Some(job_id);
    child.tags = vec!["best".into(), "ties".into(), "best".into()];
    child.config = serde_json::json!({"merge": {"method": "ties", "weights": [0.5, 0.5]}});
    child.metrics = serde_json::json!({"fitness": 0.875, "steps": 1000});
    let saved = registry.save(child).await.unwrap();

    assert_eq!(
        saved.parent_ids,
        vec![b.id, a.id],
        "order kept, duplicates dropped"
    );
    assert_eq!(saved.job_id, Some(job_id));
    assert_eq!(saved.tags, vec!["best", "ties"]);
    assert_eq!(saved.files.len(), 2);
    assert_eq!(saved.files[0].name, "model.mpk");
    assert_eq!(saved.sha256, sha256_hex(&weights("merged", 3000)));
    assert_eq!(saved.size_bytes, 3000);
    assert_eq!(
        saved.files[1].sha256,
        sha256_hex(&weights("st-merged", 2000))
    );
    assert_eq!(saved.file_path, format!("models/{}/model.mpk", saved.id));

    let loaded = registry.get(saved.id).await.unwrap();
    assert_eq!(loaded, saved, "what save returns is what get reads back");
    assert_eq!(
        registry
            .read_file(saved.id, "model.safetensors")
            .await
            .unwrap(),
        weights("st-merged", 2000)
    );
    assert_eq!(
        registry.read_primary(saved.id).await.unwrap(),
        weights("merged", 3000)
    );

    let unknown = Uuid::now_v7();
    let mut orphan = new_model("orphan", "evomerge");
    orphan.parent_ids = vec![a.id, unknown];
    match registry.save(orphan).await {
        Err(StorageError::ModelNotFound { ids }) => assert_eq!(ids, vec![unknown]),
        other => panic!("expected unknown parent, got {other:?}"),
    }
}

async fn one_winner_per_phase(db: Database, artifacts: PathBuf) {
    let registry = registry(db, artifacts);
    let a = registry.save(new_model("a", "cognate")).await.unwrap();
    let b = registry.save(new_model("b", "cognate")).await.unwrap();
    let other_phase = registry.save(new_model("c", "evomerge")).await.unwrap();
    registry.mark_winner(other_phase.id).await.unwrap();

    let first = registry.mark_winner(a.id).await.unwrap();
    assert!(first.model.winner);
    assert_eq!(first.previous, None);
    let second = registry.mark_winner(b.id).await.unwrap();
    assert_eq!(second.previous, Some(a.id));
    let again = registry.mark_winner(b.id).await.unwrap();
    assert_eq!(
        again.previous, None,
        "re-marking the winner changes nothing"
    );

    assert_eq!(registry.winner("cognate").await.unwrap().unwrap().id, b.id);
    assert!(!registry.get(a.id).await.unwrap().winner);
    assert_eq!(
        registry.winner("evomerge").await.unwrap().unwrap().id,
        other_phase.id,
        "another phase keeps its winner"
    );

    let unknown = Uuid::now_v7();
    assert!(matches!(
        registry.mark_winner(unknown).await,
        Err(StorageError::ModelNotFound { ids }) if ids == vec![unknown]
    ));
}

async fn one_winner_per_phase_under_concurrent_marks(db: Database, artifacts: PathBuf) {
    let registry = registry(db, artifacts);
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            registry
                .save(new_model(&format!("m{i}"), "cognate"))
                .await
                .unwrap()
                .id,
        );
    }
    let marks: Vec<_> = ids
        .iter()
        .map(|&id| {
            let registry = registry.clone();
            tokio::spawn(async move { registry.mark_winner(id).await })
        })
        .collect();
    for mark in marks {
        mark.await.unwrap().unwrap();
    }
    let winners = registry
        .list(&ModelFilter {
            phase: Some("cognate".into()),
            winner: Some(true),
            ..ModelFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(winners.len(), 1);
}

async fn the_database_refuses_a_second_winner(db: Database, artifacts: PathBuf) {
    let registry = registry(db.clone(), artifacts);
    let a = registry.save(new_model("a", "cognate")).await.unwrap();
    let b = registry.save(new_model("b", "cognate")).await.unwrap();
    registry.mark_winner(a.id).await.unwrap();
    // Bypass the registry: the partial unique index alone must refuse.
    let result = match &db {
        Database::Sqlite(pool) => sqlx::query("UPDATE models SET winner = TRUE WHERE id = $1")
            .bind(b.id)
            .execute(pool)
            .await
            .map(|_| ()),
        Database::Postgres(pool) => sqlx::query("UPDATE models SET winner = TRUE WHERE id = $1")
            .bind(b.id)
            .execute(pool)
            .await
            .map(|_| ()),
    };
    let error = result.expect_err("a second winner in one phase");
    assert!(
        error
            .as_database_error()
            .is_some_and(|e| e.is_unique_violation()),
        "{error}"
    );
}

async fn list_filters_by_phase_name_tag_and_winner(db: Database, artifacts: PathBuf) {
    let registry = registry(db, artifacts);
    let mut tagged = new_model("alpha", "cognate");
    tagged.tags = vec!["baseline".into()];
    let a1 = registry.save(tagged).await.unwrap();
    let a2 = registry.save(new_model("alpha", "cognate")).await.unwrap();
    let mut tagged = new_model("beta", "evomerge");
    tagged.tags = vec!["baseline".into(), "merged".into()];
    let b1 = registry.save(tagged).await.unwrap();
    registry.mark_winner(a2.id).await.unwrap();

    assert_eq!(
        registry.count_by_phase().await.unwrap(),
        vec![("cognate".to_string(), 2), ("evomerge".to_string(), 1)]
    );

    let ids = |records: Vec<grokforge_storage::ModelRecord>| -> Vec<Uuid> {
        records.into_iter().map(|r| r.id).collect()
    };
    let list = |filter: ModelFilter| {
        let registry = registry.clone();
        async move { ids(registry.list(&filter).await.unwrap()) }
    };
    assert_eq!(
        list(ModelFilter::default()).await,
        vec![a1.id, a2.id, b1.id]
    );
    assert_eq!(
        list(ModelFilter {
            phase: Some("cognate".into()),
            ..Default::default()
        })
        .await,
        vec![a1.id, a2.id]
    );
    assert_eq!(
        list(ModelFilter {
            name: Some("beta".into()),
            ..Default::default()
        })
        .await,
        vec![b1.id]
    );
    assert_eq!(
        list(ModelFilter {
            tag: Some("baseline".into()),
            ..Default::default()
        })
        .await,
        vec![a1.id, b1.id]
    );
    assert_eq!(
        list(ModelFilter {
            tag: Some("base".into()),
            ..Default::default()
        })
        .await,
        Vec::<Uuid>::new(),
        "tags match whole"
    );
    assert_eq!(
        list(ModelFilter {
            winner: Some(true),
            ..Default::default()
        })
        .await,
        vec![a2.id]
    );
    assert_eq!(
        list(ModelFilter {
            winner: Some(false),
            ..Default::default()
        })
        .await,
        vec![a1.id, b1.id]
    );
    assert_eq!(
        list(ModelFilter {
            phase: Some("cognate".into()),
            tag: Some("baseline".into()),
            winner: Some(false),
            name: Some("alpha".into()),
        })
        .await,
        vec![a1.id]
    );
    let listed = registry.list(&ModelFilter::default()).await.unwrap();
    assert!(
        listed.iter().all(|m| m.files.len() == 2),
        "records come with their files"
    );
}

async fn handoffs_are_recorded_and_checked(db: Database, artifacts: PathBuf) {
    let registry = registry(db, artifacts);
    let a = registry.save(new_model("a", "cognate")).await.unwrap();
    let b = registry.save(new_model("b", "cognate")).await.unwrap();
    let merged = registry.save(new_model("m", "evomerge")).await.unwrap();

    let first = registry
        .record_handoff("cognate", "evomerge", &[a.id])
        .await
        .unwrap();
    let second = registry
        .record_handoff("cognate", "evomerge", &[a.id, b.id])
        .await
        .unwrap();
    assert_eq!(
        registry.latest_handoff("evomerge").await.unwrap(),
        Some(second.clone())
    );
    assert_eq!(
        registry.handoffs(Some("evomerge")).await.unwrap(),
        vec![second, first]
    );
    assert_eq!(registry.latest_handoff("quietstar").await.unwrap(), None);

    let wrong_phase = registry
        .record_handoff("cognate", "evomerge", &[a.id, merged.id])
        .await
        .unwrap_err();
    assert!(
        wrong_phase.to_string().contains(&merged.id.to_string()),
        "{wrong_phase}"
    );
    let unknown = Uuid::now_v7();
    assert!(matches!(
        registry.record_handoff("cognate", "evomerge", &[unknown]).await,
        Err(StorageError::ModelNotFound { ids }) if ids == vec![unknown]
    ));
}

async fn a_crash_mid_write_leaves_no_visible_model_and_gc_removes_the_rest(
    db: Database,
    artifacts: PathBuf,
) {
    let registry = registry(db, artifacts);
    let store = registry.store().clone();
    let live = registry.save(new_model("live", "cognate")).await.unwrap();

    // A save cut short mid-write: the temp file exists, no rename happened, no row.
    let crashed = Uuid::now_v7();
    let mut pending = store.begin_model_file(crashed, "model.mpk").unwrap();
    pending.write_bytes(&weights("partial", 1000)).unwrap();
    let final_path = pending.target().to_path_buf();
    std::mem::forget(pending); // a crash runs no destructor
    assert!(!final_path.exists(), "no file under its final name");
    assert!(matches!(
        registry.get(crashed).await,
        Err(StorageError::ModelNotFound { .. })
    ));
    assert!(registry.list(&ModelFilter::default()).await.unwrap().len() == 1);

    // A save cut short after its files but before its row.
    let unrecorded = Uuid::now_v7();
    store
        .write_model_files(unrecorded, &[("model.mpk".into(), b"weights" as &[u8])])
        .unwrap();
    // A temp file left beside a live model's files.
    std::fs::write(store.model_dir(live.id).join(".tmp-model.mpk-x"), b"junk").unwrap();

    // Young leftovers may be writes in flight: the default grace period keeps them.
    let kept = registry.gc(GcOptions::default()).await.unwrap();
    assert!(kept.removed.is_empty(), "{kept:?}");

    let dry = registry
        .gc(GcOptions {
            min_age: Duration::ZERO,
            dry_run: true,
            ..GcOptions::default()
        })
        .await
        .unwrap();
    assert_eq!(dry.removed.len(), 3, "{dry:?}");
    assert!(
        store.model_dir(crashed).exists(),
        "a dry run removes nothing"
    );

    let report = registry
        .gc(GcOptions {
            min_age: Duration::ZERO,
            ..GcOptions::default()
        })
        .await
        .unwrap();
    let removed: HashSet<(PathBuf, GcReason)> = report
        .removed
        .iter()
        .map(|r| (r.path.clone(), r.reason))
        .collect();
    assert_eq!(
        removed,
        HashSet::from([
            (store.model_dir(crashed), GcReason::OrphanModel),
            (store.model_dir(unrecorded), GcReason::OrphanModel),
            (
                store.model_dir(live.id).join(".tmp-model.mpk-x"),
                GcReason::TempFile
            ),
        ])
    );
    assert!(report.removed_bytes() >= 1000 + 7 + 4);
    assert!(!store.model_dir(crashed).exists());
    assert!(!store.model_dir(unrecorded).exists());
    // The live model is untouched and still verifies.
    registry.verify(live.id).await.unwrap();
}

async fn a_corrupted_or_truncated_file_is_refused_naming_the_model(
    db: Database,
    artifacts: PathBuf,
) {
    let registry = registry(db, artifacts);
    let model = registry
        .save(new_model("fragile", "cognate"))
        .await
        .unwrap();
    let path = registry.store().model_dir(model.id).join("model.mpk");
    let original = std::fs::read(&path).unwrap();

    let expect_corrupt = |result: Result<Vec<u8>, StorageError>| match result {
        Err(error @ StorageError::ArtifactCorrupt { .. }) => {
            let message = error.to_string();
            assert!(message.contains(&model.id.to_string()), "{message}");
            assert!(message.contains("model.mpk"), "{message}");
        }
        other => panic!("expected a corrupt-artifact error, got {other:?}"),
    };

    // Same length, one bit flipped.
    let mut flipped = original.clone();
    flipped[10] ^= 1;
    std::fs::write(&path, &flipped).unwrap();
    expect_corrupt(registry.read_primary(model.id).await);
    assert!(registry.verify(model.id).await.is_err());

    // Truncated.
    std::fs::write(&path, &original[..original.len() / 2]).unwrap();
    expect_corrupt(registry.read_file(model.id, "model.mpk").await);

    // Exporting it fails the same way and leaves no package behind.
    let error = registry
        .export_models(&[model.id], ExportFormat::All, Compression::Deflate)
        .await
        .unwrap_err();
    assert!(
        matches!(error, StorageError::ArtifactCorrupt { .. }),
        "{error}"
    );
    assert!(no_entries(&registry.store().exports_dir()));
    assert!(registry.list_exports().await.unwrap().is_empty());

    // Missing.
    std::fs::remove_file(&path).unwrap();
    expect_corrupt(registry.read_primary(model.id).await);

    // Restored, it reads again.
    std::fs::write(&path, &original).unwrap();
    assert_eq!(registry.read_primary(model.id).await.unwrap(), original);
}

async fn delete_removes_the_record_and_the_files(db: Database, artifacts: PathBuf) {
    let registry = registry(db, artifacts);
    let v1 = registry.save(new_model("doomed", "cognate")).await.unwrap();
    registry.mark_winner(v1.id).await.unwrap();
    let dir = registry.store().model_dir(v1.id);
    assert!(dir.join("model.mpk").exists());

    let deleted = registry.delete(v1.id).await.unwrap();
    assert_eq!(deleted.id, v1.id);
    assert!(!dir.exists());
    assert!(matches!(
        registry.get(v1.id).await,
        Err(StorageError::ModelNotFound { .. })
    ));
    assert!(matches!(
        registry.delete(v1.id).await,
        Err(StorageError::ModelNotFound { .. })
    ));
    assert_eq!(registry.winner("cognate").await.unwrap(), None);
    let v2 = registry.save(new_model("doomed", "cognate")).await.unwrap();
    assert_eq!(v2.version, 2, "a deleted version's number is not reused");
}

fn check_manifest(
    manifest: &ExportManifest,
    models: &[&grokforge_storage::ModelRecord],
    read: &mut dyn FnMut(&str) -> Vec<u8>,
) {
    assert_eq!(manifest.models.len(), models.len());
    for (exported, model) in manifest.models.iter().zip(models) {
        assert_eq!(exported.id, model.id);
        assert_eq!(exported.version, model.version);
        assert_eq!(exported.sha256, model.sha256);
        assert_eq!(
            exported.directory,
            format!("{}-v{}", model.name, model.version)
        );
        let names: Vec<&str> = exported
            .files
            .iter()
            .map(|f| f.path.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "model.mpk",
                "model.safetensors",
                "config.json",
                "metadata.json"
            ]
        );
        for file in &exported.files {
            let bytes = read(&file.path);
            assert_eq!(sha256_hex(&bytes), file.sha256, "{}", file.path);
            assert_eq!(bytes.len() as u64, file.size_bytes);
            if let Some(registered) = model.file(file.path.rsplit('/').next().unwrap()) {
                assert_eq!(
                    registered.sha256, file.sha256,
                    "weights are exported unchanged"
                );
            }
        }
        let config: serde_json::Value =
            serde_json::from_slice(&read(&format!("{}/config.json", exported.directory))).unwrap();
        assert_eq!(config, model.config);
        let metadata: grokforge_storage::ModelRecord =
            serde_json::from_slice(&read(&format!("{}/metadata.json", exported.directory)))
                .unwrap();
        assert_eq!(&metadata, *model);
    }
}

async fn zip_export_manifest_lists_every_file_with_its_checksum(db: Database, artifacts: PathBuf) {
    let registry = registry(db, artifacts);
    let a = registry.save(new_model("alpha", "cognate")).await.unwrap();
    let b = registry.save(new_model("beta", "cognate")).await.unwrap();
    let export = registry
        .export_models(&[a.id, b.id, a.id], ExportFormat::All, Compression::Deflate)
        .await
        .unwrap();
    assert_eq!(export.model_ids, vec![a.id, b.id]);
    assert!(export.compressed);
    assert_eq!(export.path, format!("exports/{}.zip", export.id));
    assert_eq!(registry.get_export(export.id).await.unwrap(), export);

    let path = registry.export_path(&export);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), export.size_bytes);
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
    let mut read = |name: &str| {
        let mut bytes = Vec::new();
        archive
            .by_name(name)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .read_to_end(&mut bytes)
            .unwrap();
        bytes
    };
    let manifest: ExportManifest = serde_json::from_slice(&read(EXPORT_MANIFEST_FILE)).unwrap();
    assert_eq!(manifest.export_id, export.id);
    assert_eq!(manifest.created_at, export.created_at);
    assert_eq!(manifest.compression, Compression::Deflate);
    check_manifest(&manifest, &[&a, &b], &mut read);
    assert_eq!(
        archive.len(),
        1 + 2 * 4,
        "the manifest and four files per model"
    );
    // Nothing but the package in the exports directory.
    let entries: Vec<_> = std::fs::read_dir(registry.store().exports_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(entries, [format!("{}.zip", export.id)]);
}

async fn directory_export_matches_the_registry(db: Database, artifacts: PathBuf) {
    let registry = registry(db, artifacts);
    let a = registry.save(new_model("alpha", "cognate")).await.unwrap();
    let export = registry
        .export_models(&[a.id], ExportFormat::All, Compression::None)
        .await
        .unwrap();
    assert!(!export.compressed);
    let root = registry.export_path(&export);
    assert!(root.is_dir());
    let manifest: ExportManifest =
        serde_json::from_slice(&std::fs::read(root.join(EXPORT_MANIFEST_FILE)).unwrap()).unwrap();
    check_manifest(&manifest, &[&a], &mut |name| {
        std::fs::read(root.join(name)).unwrap()
    });

    // Only the safetensors file, for PyTorch users.
    let st = registry
        .export_models(&[a.id], ExportFormat::Safetensors, Compression::None)
        .await
        .unwrap();
    let root = registry.export_path(&st);
    let manifest: ExportManifest =
        serde_json::from_slice(&std::fs::read(root.join(EXPORT_MANIFEST_FILE)).unwrap()).unwrap();
    let paths: Vec<&str> = manifest.models[0]
        .files
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "alpha-v1/model.safetensors",
            "alpha-v1/config.json",
            "alpha-v1/metadata.json"
        ]
    );
    assert_eq!(
        std::fs::read(root.join("alpha-v1/model.safetensors")).unwrap(),
        weights("st-alpha", 2000)
    );
    assert_eq!(registry.list_exports().await.unwrap().len(), 2);
}

async fn export_of_unknown_ids_names_them_and_writes_nothing(db: Database, artifacts: PathBuf) {
    let registry = registry(db, artifacts);
    let known = registry.save(new_model("known", "cognate")).await.unwrap();
    let (x, y) = (Uuid::now_v7(), Uuid::now_v7());
    for compression in [Compression::Deflate, Compression::None] {
        let error = registry
            .export_models(&[x, known.id, y], ExportFormat::All, compression)
            .await
            .unwrap_err();
        match &error {
            StorageError::ModelNotFound { ids } => assert_eq!(ids, &vec![x, y]),
            other => panic!("expected unknown ids, got {other:?}"),
        }
        let message = error.to_string();
        assert!(message.contains(&x.to_string()) && message.contains(&y.to_string()));
    }
    assert!(no_entries(&registry.store().exports_dir()));
    assert!(registry.list_exports().await.unwrap().is_empty());

    let mut burn_only = new_model("burn-only", "cognate");
    burn_only.files.truncate(1);
    let burn_only = registry.save(burn_only).await.unwrap();
    let error = registry
        .export_models(
            &[burn_only.id],
            ExportFormat::Safetensors,
            Compression::Deflate,
        )
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains(&burn_only.id.to_string()),
        "{error}"
    );
    assert!(no_entries(&registry.store().exports_dir()));
}

async fn gc_removes_orphan_and_expired_exports(db: Database, artifacts: PathBuf) {
    let registry = registry(db, artifacts);
    let store: &ArtifactStore = registry.store();
    let a = registry.save(new_model("alpha", "cognate")).await.unwrap();
    let kept = registry
        .export_models(&[a.id], ExportFormat::Primary, Compression::Deflate)
        .await
        .unwrap();
    let orphan = store.exports_dir().join(format!("{}.zip", Uuid::now_v7()));
    std::fs::write(&orphan, b"PK").unwrap();
    let temp = store.exports_dir().join(format!(".tmp-{}", Uuid::now_v7()));
    std::fs::create_dir(&temp).unwrap();
    let unrelated = store.exports_dir().join("README");
    std::fs::write(&unrelated, b"not ours").unwrap();

    let report = registry
        .gc(GcOptions {
            min_age: Duration::ZERO,
            ..GcOptions::default()
        })
        .await
        .unwrap();
    let removed: HashSet<(PathBuf, GcReason)> = report
        .removed
        .iter()
        .map(|r| (r.path.clone(), r.reason))
        .collect();
    assert_eq!(
        removed,
        HashSet::from([(orphan, GcReason::OrphanExport), (temp, GcReason::TempFile)])
    );
    assert!(
        unrelated.exists(),
        "names gc could not have generated are left alone"
    );
    assert!(registry.export_path(&kept).exists());

    // One hour later, with a 30 minute retention, the export is stale.
    let later = registry
        .gc(GcOptions {
            min_age: Duration::ZERO,
            export_max_age: Some(Duration::from_secs(30 * 60)),
            now: std::time::SystemTime::now() + Duration::from_secs(3600),
            ..GcOptions::default()
        })
        .await
        .unwrap();
    assert_eq!(later.removed.len(), 1, "{later:?}");
    assert_eq!(later.removed[0].reason, GcReason::ExpiredExport);
    assert!(!registry.export_path(&kept).exists());
    assert!(matches!(
        registry.get_export(kept.id).await,
        Err(StorageError::ExportNotFound { .. })
    ));
    // The model itself is not an export's to remove.
    registry.verify(a.id).await.unwrap();
}

async fn invalid_saves_are_refused_before_anything_is_written(db: Database, artifacts: PathBuf) {
    let registry = registry(db, artifacts.clone());
    type Mutation = Box<dyn Fn(&mut grokforge_storage::NewModel) + Send + Sync>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("name", Box::new(|m| m.name = "../escape".into())),
        ("phase", Box::new(|m| m.phase = String::new())),
        (
            "file name",
            Box::new(|m| m.files[0].name = "../../etc/passwd".into()),
        ),
        ("files", Box::new(|m| m.files.clear())),
        ("files", Box::new(|m| m.files[1].name = "model.mpk".into())),
        (
            "files",
            Box::new(|m| m.files[1].name = "config.json".into()),
        ),
        ("tag", Box::new(|m| m.tags = vec![" padded".into()])),
    ];
    for (field, mutate) in cases {
        let mut model = new_model("bad", "cognate");
        mutate(&mut model);
        match registry.save(model).await {
            Err(StorageError::Invalid { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{field}: expected invalid, got {other:?}"),
        }
    }
    assert!(no_entries(&artifacts.join("models")));
    assert!(
        registry
            .list(&ModelFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
}
