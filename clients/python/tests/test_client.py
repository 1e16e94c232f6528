"""The Python client against a real node: a job from start to download, its event stream
(replayed, live, resumable with `since`) and errors as problems. The examples that use it
are tested in examples/python/tests."""

from __future__ import annotations

import time
import zipfile

import pytest

from grokforge_client import Client, GrokforgeError

SMALL_JOB = {
    "dataset": "mod-add:11", "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32,
    "batch_size": 16, "steps": 60, "eval_every": 10, "variants": 2, "threads": 1,
}


def test_a_job_from_start_to_download(client: Client, tmp_path):
    job = client.start_phase("cognate", **SMALL_JOB)
    assert job["status"] == "queued"
    assert any(j["id"] == job["id"] for j in client.jobs(limit=10))

    frames = list(client.watch(job["id"], deadline=_deadline(240)))
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "training_started", kinds
    assert kinds[-1] == "training_completed", kinds
    seqs = [f["seq"] for f in frames]
    assert seqs == sorted(set(seqs)), "every event once, in order"
    progress = [f["data"] for f in frames if f["type"] == "training_progress"]
    assert {p["variant"] for p in progress} == {0, 1}
    assert all(p["step"] <= p["total_steps"] == 60 for p in progress)

    # The durable log holds the same events; `since` resumes after a sequence number.
    log = client.events(job["id"])
    assert [e["seq"] for e in log] == seqs
    assert [e["event"]["type"] for e in log] == kinds
    resumed = list(client.watch(job["id"], since=seqs[2]))
    assert [f["seq"] for f in resumed] == seqs[3:]
    # A finished job with nothing after `since` ends the watch at once.
    assert list(client.watch(job["id"], since=seqs[-1])) == []

    record = client.job(job["id"])
    assert record["status"] == "completed"
    models = client.models(job_id=job["id"])
    assert len(models) == 2
    winners = [m for m in models if m["winner"]]
    assert len(winners) == 1
    assert all(len(m["sha256"]) == 64 for m in models)

    export = client.export([winners[0]["id"]], format="all")
    package = client.download(export["id"], tmp_path)
    assert zipfile.is_zipfile(package)
    with zipfile.ZipFile(package) as archive:
        names = archive.namelist()
    assert any(n.endswith("model.safetensors") for n in names), names
    assert any(n.endswith("export_manifest.json") for n in names), names


def test_errors_are_the_nodes_problems(client: Client, node):
    with pytest.raises(GrokforgeError) as bad_type:
        client.start_phase("cognate", steps=-1)
    assert bad_type.value.status == 422
    assert bad_type.value.field == "steps"
    assert "steps" in bad_type.value.detail

    with pytest.raises(GrokforgeError) as unknown:
        client.start_phase("not-a-phase")
    assert unknown.value.status == 404
    assert "cognate" in unknown.value.problem["valid_phases"]

    with pytest.raises(GrokforgeError) as no_job:
        client.job("00000000-0000-0000-0000-000000000000")
    assert no_job.value.status == 404

    wrong = Client(node.url, "not-the-token")
    with pytest.raises(GrokforgeError) as refused:
        wrong.jobs()
    assert refused.value.status == 401
    with pytest.raises(GrokforgeError) as refused_ws:
        next(wrong.watch("00000000-0000-0000-0000-000000000000"))
    assert refused_ws.value.status == 401


def test_node_health_and_cluster(client: Client):
    report = client.health()
    assert report["status"] in ("healthy", "degraded", "unhealthy")
    assert {"training", "model"} <= set(report["services"])
    nodes = client.nodes()
    assert len(nodes) == 1 and nodes[0]["node_id"] == report["node_id"]
    phases = client.phases()
    assert [p["name"] for p in phases][0] == "cognate"
    assert "StartJobRequest" in client.openapi()["components"]["schemas"]


def _deadline(seconds: float) -> float:
    return time.monotonic() + seconds
