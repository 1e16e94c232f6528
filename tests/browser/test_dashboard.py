"""The dashboard in a real browser against a real node: sign in, start a job from the form, watch
its curves grow, see it complete and its models listed, export and download the package; a
wrong token and a bad field each get a clear message. Every wait has a deadline; none sleeps.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
import zipfile

from playwright.sync_api import Page, expect

# Small enough to train in ~10 s on two CPU cores, long enough to be watched while it runs, and
# set up to grok (weight decay, a larger training share) so the screenshot shows the curves
# people look for: training accuracy first, validation accuracy catching up later.
JOB_FIELDS = {
    "dataset": "mod-add:17",
    "train_fraction": 0.7,
    "steps": 2500,
    "variants": 1,
    "batch_size": 32,
    "d_model": 32,
    "n_layers": 1,
    "n_heads": 2,
    "d_ff": 64,
    "lr": 0.003,
    "optimizer": "adamw",
    "weight_decay": 1,
    "eval_every": 20,
    "threads": 1,
}
JOB_TIMEOUT_MS = 240_000


def sign_in(page: Page, base_url: str, token: str) -> None:
    page.goto(base_url + "/")
    page.get_by_test_id("token-input").fill(token)
    page.get_by_test_id("token-submit").click()
    expect(page.get_by_test_id("view-jobs")).to_be_visible()


def api(node, path: str) -> object:
    request = urllib.request.Request(node.url + path, headers={"Authorization": f"Bearer {node.token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_a_wrong_token_is_refused_with_a_clear_message(page: Page, base_url):
    page.goto(base_url + "/")
    page.get_by_test_id("token-input").fill("not-the-token")
    page.get_by_test_id("token-submit").click()
    message = page.get_by_test_id("login-error")
    expect(message).to_be_visible()
    expect(message).to_contain_text("401")
    expect(message).to_contain_text("refused this token")
    expect(page.locator("#app")).to_be_hidden()


def test_a_bad_field_shows_the_servers_error_next_to_it(page: Page, base_url, node):
    sign_in(page, base_url, node.token)
    page.get_by_test_id("nav-start").click()
    steps = page.get_by_test_id("field-steps")
    expect(steps).to_be_visible()
    # The form's fields and defaults are the OpenAPI document's.
    schema = api(node, "/openapi.json")["components"]["schemas"]["StartJobRequest"]["properties"]
    expect(steps).to_have_value(str(schema["steps"]["default"]))
    assert page.locator("#start-fields .field").count() == len(schema)

    steps.fill("-1")
    page.get_by_test_id("start-submit").click()
    error = page.get_by_test_id("field-error-steps")
    expect(error).to_be_visible()
    expect(error).to_contain_text("steps")
    expect(page.locator('.field[data-field="steps"]')).to_have_class(re.compile(r"\binvalid\b"))

    # A value of the right type that the node's validation refuses: also placed by its field.
    page.locator("#start-reset").click()
    expect(error).to_be_hidden()
    page.get_by_test_id("field-batch_size").fill("0")
    page.get_by_test_id("start-submit").click()
    batch_error = page.get_by_test_id("field-error-batch_size")
    expect(batch_error).to_be_visible()
    expect(batch_error).to_contain_text("batch_size")
    expect(page).to_have_url(re.compile(r"#/start$"))


def test_train_watch_export_and_download(page: Page, base_url, node, artifacts, tmp_path):
    sign_in(page, base_url, node.token)
    page.get_by_test_id("nav-start").click()
    expect(page.get_by_test_id("field-steps")).to_be_visible()
    page.get_by_test_id("start-phase").select_option("cognate")
    for name, value in JOB_FIELDS.items():
        field = page.get_by_test_id(f"field-{name}")
        if field.evaluate("node => node.tagName") == "SELECT":
            field.select_option(str(value))
        else:
            field.fill(str(value))
    page.get_by_test_id("start-submit").click()

    expect(page).to_have_url(re.compile(r"#/job/[0-9a-f-]{36}"), timeout=20_000)
    job_id = page.url.rsplit("/", 1)[1]
    status = page.get_by_test_id("job-status")
    points = page.get_by_test_id("point-count")

    # The curve gains points while the job runs.
    expect(status).to_have_text("running", timeout=60_000)
    expect(points).not_to_have_text("0", timeout=60_000)
    first = int(points.inner_text())
    expect(page.locator("#chart-loss canvas")).to_have_count(1)

    # Drop the WebSocket mid-run: the page reconnects and resubscribes with `since`.
    page.evaluate("window.grokforge.live.socket.close()")
    expect(page.get_by_test_id("ws-status")).to_have_attribute("data-state", "live", timeout=30_000)
    # The count only grows, so "no longer `first`" is "more than `first`". (The page's CSP
    # forbids eval, so Playwright's wait_for_function cannot poll an expression here.)
    expect(points).not_to_have_text(str(first), timeout=JOB_TIMEOUT_MS)
    assert int(points.inner_text()) > first
    rate = page.get_by_test_id("job-rate").inner_text()

    expect(status).to_have_text("completed", timeout=JOB_TIMEOUT_MS)
    # No gap and no duplicate across the reconnect: one point per progress event in the log.
    events = api(node, f"/jobs/{job_id}/events?since=0&limit=10000")
    progress = [e for e in events if e["event"]["type"] == "training_progress"]
    expect(points).to_have_text(str(len(progress)), timeout=10_000)
    assert rate.endswith("steps/s") or rate == "—", rate
    expect(page.get_by_test_id("job-progress")).to_have_text("100.0%")
    expect(page.locator("#chart-loss")).to_have_attribute("data-curves", re.compile(r"[1-9]"))
    expect(page.locator("#chart-acc")).to_have_attribute("data-curves", re.compile(r"[1-9]"))

    models = page.get_by_test_id("job-model")
    expect(models.first).to_be_visible(timeout=30_000)
    expect(page.get_by_test_id("job-models")).to_contain_text("winner")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(artifacts / "dashboard-job.png"), full_page=True)

    # The jobs list has it as completed.
    page.get_by_test_id("nav-jobs").click()
    row = page.locator(f'[data-testid="job-row"][data-job-id="{job_id}"]')
    expect(row).to_have_attribute("data-status", "completed", timeout=20_000)
    page.screenshot(path=str(artifacts / "dashboard-jobs.png"))

    # Its models in the registry: lineage, winner; export and download.
    page.goto(f"{base_url}/#/models?job={job_id}")
    model_rows = page.locator(f'[data-testid="model-row"][data-job-id="{job_id}"]')
    expect(model_rows.first).to_be_visible(timeout=20_000)
    winner_row = model_rows.filter(has=page.get_by_test_id("winner"))
    expect(winner_row).to_have_count(1)
    expect(winner_row).to_contain_text(job_id[-8:])  # lineage: the producing job
    winner_row.get_by_test_id("export-button").click()
    download_link = page.get_by_test_id("download-export").first
    expect(download_link).to_be_visible(timeout=120_000)
    page.screenshot(path=str(artifacts / "dashboard-models.png"))
    with page.expect_download() as info:
        download_link.click()
    saved = tmp_path / info.value.suggested_filename
    info.value.save_as(saved)
    assert saved.name.endswith(".zip"), saved.name
    assert zipfile.is_zipfile(saved)
    with zipfile.ZipFile(saved) as archive:
        names = archive.namelist()
    assert any(name.endswith("model.safetensors") for name in names), names
    assert any(name.endswith("export_manifest.json") for name in names), names


def test_health_lists_every_service_and_the_node(page: Page, base_url, node):
    sign_in(page, base_url, node.token)
    page.get_by_test_id("nav-health").click()
    report = api(node, "/health")
    rows = page.locator('[data-testid="health-services"] [data-testid="health-row"]')
    expect(rows).to_have_count(len(report["services"]), timeout=20_000)
    expect(page.get_by_test_id("node-row")).to_have_count(len(api(node, "/cluster/nodes")))
    try:
        api(node, "/alerts")
        alerts = True
    except urllib.error.HTTPError as error:
        assert error.code == 404, error
        alerts = False
    if alerts:
        expect(page.get_by_test_id("alerts-panel")).to_be_visible()
    else:
        expect(page.get_by_test_id("alerts-panel")).to_be_hidden()


def test_cancel_from_the_jobs_list(page: Page, base_url, node):
    body = dict(JOB_FIELDS, steps=1_000_000)
    request = urllib.request.Request(
        node.url + "/phases/cognate/start",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {node.token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        job_id = json.loads(response.read())["id"]
    sign_in(page, base_url, node.token)
    row = page.locator(f'[data-testid="job-row"][data-job-id="{job_id}"]')
    # Live: the row turns running without a reload.
    expect(row).to_have_attribute("data-status", "running", timeout=60_000)
    row.get_by_test_id("cancel-job").click()
    expect(row).to_have_attribute("data-status", "cancelled", timeout=60_000)
    assert api(node, f"/jobs/{job_id}")["status"] == "cancelled"
