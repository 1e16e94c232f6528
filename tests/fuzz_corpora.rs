//! The fuzz targets (`fuzz/`) replayed in `make test`: every seed of `fuzz/seeds/<target>/`
//! and every input a campaign found and we fixed, kept in `fuzz/regressions/<target>/`, goes
//! through the very function its `cargo fuzz` binary calls, on the stable toolchain.
//!
//! The seeds that need real encoders (signed frames, checkpoints, export packages) are written
//! by `write_seeds`, run by hand after a format changes:
//! `cargo nextest run --test fuzz_corpora --run-ignored only`.

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn every_seed_and_regression_goes_through_its_target_without_a_panic() {
    let mut failures = Vec::new();
    for (target, run) in targets::TARGETS {
        let seeds = inputs("seeds", target);
        assert!(seeds.len() >= 3, "{target} has {} seeds", seeds.len());
        for input in seeds.iter().chain(&inputs("regressions", target)) {
            let data = std::fs::read(input).unwrap();
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                failures.push(input.display().to_string());
            }
        }
    }
    targets::remove_scratch();
    assert!(failures.is_empty(), "inputs that panic: {failures:#?}");
}

#[test]
fn every_target_has_a_binary_and_every_binary_a_target() {
    let binaries: std::collections::BTreeSet<String> =
        std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
            .unwrap()
            .map(|e| {
                let path = e.unwrap().path();
                path.file_stem().unwrap().to_string_lossy().into_owned()
            })
            .collect();
    let listed: std::collections::BTreeSet<String> = targets::TARGETS
        .iter()
        .map(|(name, _)| name.to_string())
        .collect();
    assert_eq!(binaries, listed);
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for name in &listed {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{name} is not a [[bin]] of fuzz/Cargo.toml"
        );
    }
}

/// Writes the seed corpora. Hand-written inputs are literals here; the rest come from the real
/// encoders: signed cluster frames, checkpoints of short real runs, an export package.
#[test]
#[ignore = "writes fuzz/seeds; run by hand"]
fn write_seeds() {
    use grokforge_actors::cluster::{FrameCodec, Heartbeat, WireBody};
    use grokforge_actors::events::{Event, EventEnvelope, SCHEMA_VERSION};
    use grokforge_actors::services::discovery::NodeInfo;
    use grokforge_actors::training_core::checkpoint::HEADER_LEN;
    use grokforge_actors::training_core::{
        Dataset, GrokFastKind, NoopObserver, RunControl, TrainSpec, Trainer, parse_device,
    };
    use std::sync::Arc;

    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = fuzz_dir().join("seeds").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };

    // cluster_frame: what a node publishes, signed with the targets' secret, and the bodies alone.
    let codec = FrameCodec::new("fuzz-cluster-secret");
    let job_id = uuid::Uuid::now_v7();
    let bodies = [
        (
            "job-queued",
            WireBody::Event(EventEnvelope::new(
                "node-a",
                "training_service",
                Event::JobQueued {
                    job_id,
                    phase: "cognate".into(),
                },
            )),
        ),
        (
            "heartbeat",
            WireBody::Heartbeat(Heartbeat {
                schema_version: SCHEMA_VERSION,
                node_id: "node-a".into(),
                seq: 7,
            }),
        ),
        (
            "node",
            WireBody::Node(NodeInfo {
                node_id: "node-a".into(),
                name: "a".into(),
                version: "0.1.0".into(),
                address: Some("http://127.0.0.1:8080".into()),
                started_at: chrono::Utc::now(),
                heartbeat_at: chrono::Utc::now(),
                status: None,
                services: Default::default(),
                running_jobs: vec![job_id],
            }),
        ),
    ];
    for (name, body) in &bodies {
        write(
            "cluster_frame",
            &format!("{name}.frame"),
            &codec.encode(body).unwrap(),
        );
        write(
            "cluster_frame",
            &format!("{name}.body"),
            &rmp_serde::to_vec_named(body).unwrap(),
        );
    }
    write(
        "cluster_frame",
        "other-cluster.frame",
        &FrameCodec::new("another secret")
            .encode(&bodies[1].1)
            .unwrap(),
    );

    for (name, text) in [
        (
            "subscribe",
            r#"{"type":"subscribe","topic":"training_updates"}"#,
        ),
        (
            "subscribe-since",
            r#"{"type":"subscribe","topic":"job:0190f0f0-0000-7000-8000-000000000000","since":0}"#,
        ),
        (
            "unsubscribe",
            r#"{"type":"unsubscribe","topic":"admin_alerts"}"#,
        ),
        ("ping", r#"{"type":"ping"}"#),
        ("unknown-field", r#"{"type":"ping","extra":1}"#),
    ] {
        write("ws_client_frame", &format!("{name}.json"), text.as_bytes());
    }

    for (name, text) in [
        (
            "start-tiny",
            r#"{"dataset":"mod-add:11","d_model":16,"n_layers":1,"n_heads":2,"d_ff":32,"batch_size":16,"steps":60,"variants":2,"threads":1,"seed":3,"priority":2}"#,
        ),
        (
            "start-grokfast-ma",
            r#"{"dataset":"mod-mul:97","grokfast":"ma","window":100,"lamb":5.0,"weight_decay":0.01,"stop_at_val_acc":0.95,"steps":4000}"#,
        ),
        ("start-empty", "{}"),
        (
            "start-path-field",
            r#"{"text":"/etc/passwd","out":"/tmp/x"}"#,
        ),
        (
            "export",
            r#"{"model_ids":["0190f0f0-0000-7000-8000-000000000000"],"format":"safetensors","compression":false}"#,
        ),
        ("export-empty", r#"{"model_ids":[]}"#),
    ] {
        write("json_bodies", &format!("{name}.json"), text.as_bytes());
    }

    for (name, text) in [
        (
            "tokens",
            "[[gateway.tokens]]\ntoken = \"t\"\nrole = \"admin\"\n[gateway]\nmetrics_open = true\n",
        ),
        (
            "cluster",
            "[broker]\nurl = \"redis://127.0.0.1:6379\"\n[cluster]\nsecret = \"0123456789abcdef0123456789abcdef\"\n[database]\nurl = \"postgres://postgres@127.0.0.1/test\"\n",
        ),
        (
            "training",
            "[training]\nmax_concurrent_jobs = 2\nstop_on_divergence = false\n[storage]\nmax_dataset_bytes = 1048576\n",
        ),
        ("empty", ""),
    ] {
        write("config_toml", &format!("{name}.toml"), text.as_bytes());
    }

    // checkpoint: short real runs with each filter, as files and as payloads (which the target
    // seals itself).
    let device = parse_device("cpu").unwrap();
    for kind in [GrokFastKind::None, GrokFastKind::Ema, GrokFastKind::Ma] {
        let spec = TrainSpec {
            dataset: Some("mod-add:5".into()),
            d_model: Some(8),
            n_layers: Some(1),
            n_heads: Some(1),
            d_ff: Some(8),
            batch_size: 4,
            steps: 3,
            eval_every: 3,
            warmup_steps: 1,
            grokfast: kind,
            window: 2,
            ..TrainSpec::default()
        };
        let data = Arc::new(
            Dataset::prepare(
                &spec.data_source().unwrap(),
                &spec.dataset_options(None).unwrap(),
            )
            .unwrap(),
        );
        let mut trainer = Trainer::new(spec.run_config(0, &data).unwrap(), data, &device).unwrap();
        trainer
            .run(&RunControl::default(), &mut NoopObserver)
            .unwrap();
        let bytes = trainer.checkpoint().unwrap().to_bytes().unwrap();
        let name = format!("{kind:?}").to_lowercase();
        write("checkpoint", &format!("{name}.gfck"), &bytes);
        write(
            "checkpoint",
            &format!("{name}.payload"),
            &bytes[HEADER_LEN..],
        );
    }

    for (name, text) in [
        (
            "plain.txt",
            "grokking: generalisation long after overfitting\nsecond line\n",
        ),
        (
            "records.jsonl",
            "{\"text\":\"first record\"}\n{\"text\":\"second\",\"other\":1}\n",
        ),
        ("bad-line.jsonl", "{\"text\":\"ok\"}\n{\"nope\":2}\n"),
        ("utf8.txt", "añb – ∑ 🙂\n"),
    ] {
        write("text_corpus", name, text.as_bytes());
    }

    let tokenizer = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{"id": 0, "content": "</s>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"</s>": 0, "[UNK]": 1, "grokking": 2,
                  "happens": 3, "late": 4, ",": 5, "then": 6, "fast": 7},
                  "unk_token": "[UNK]"}
    });
    write(
        "tokenizer_json",
        "word-level.json",
        serde_json::to_string_pretty(&tokenizer).unwrap().as_bytes(),
    );
    write("tokenizer_json", "not-json.json", b"{\"version\": ");
    write(
        "tokenizer_json",
        "no-model.json",
        br#"{"version":"1.0","added_tokens":[],"model":{"type":"BPE"}}"#,
    );

    // export_archive: a package as the registry writes it (a manifest listing one file), one
    // whose file differs from its listing, one without a manifest.
    let weights = b"safetensors stand-in bytes".to_vec();
    let sha = {
        use sha2::Digest;
        sha2::Sha256::digest(&weights)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let manifest = |sha: &str| {
        serde_json::json!({
            "schema_version": 1, "export_id": job_id, "created_at": chrono::Utc::now(),
            "format": "safetensors", "compression": "deflate",
            "models": [{"id": job_id, "name": "cognate-v1", "phase": "cognate", "version": 1,
                        "directory": "cognate-v1", "sha256": sha,
                        "files": [{"path": "cognate-v1/model.safetensors",
                                   "size_bytes": weights.len(), "sha256": sha}]}]
        })
    };
    let zip = |entries: &[(&str, Vec<u8>)]| {
        let mut out = std::io::Cursor::new(Vec::new());
        let mut writer = zip::ZipWriter::new(&mut out);
        for (name, bytes) in entries {
            writer
                .start_file(
                    *name,
                    zip::write::SimpleFileOptions::default()
                        .compression_method(zip::CompressionMethod::Deflated),
                )
                .unwrap();
            std::io::Write::write_all(&mut writer, bytes).unwrap();
        }
        writer.finish().unwrap();
        out.into_inner()
    };
    let file = ("cognate-v1/model.safetensors", weights.clone());
    write(
        "export_archive",
        "package.zip",
        &zip(&[
            (
                "export_manifest.json",
                manifest(&sha).to_string().into_bytes(),
            ),
            file.clone(),
        ]),
    );
    write(
        "export_archive",
        "differs.zip",
        &zip(&[
            (
                "export_manifest.json",
                manifest(&"0".repeat(64)).to_string().into_bytes(),
            ),
            file.clone(),
        ]),
    );
    write("export_archive", "no-manifest.zip", &zip(&[file]));
}
