// The grokforge dashboard: plain ES2020 in one file, no build step, served by the node itself.
//
// Parts, in file order:
//   * api()           — fetch with the bearer token; errors as RFC 9457 problems (ApiError).
//   * Live            — one WebSocket to /ws?token=…, with automatic reconnect; every
//                       subscription is re-sent after a reconnect, a `job:{id}` one with
//                       `since` = the last sequence number seen, so the curves have no gap.
//   * SeriesStore     — one training curve (a variant of a job), bounded in memory: past
//                       MAX_POINTS_PER_SERIES it merges neighbouring points pairwise.
//   * chart data      — EMA smoothing, then min/max per pixel bucket across all curves, so a
//                       100,000-step curve draws as ~2 points per pixel.
//   * views           — jobs, one job (curves, overlay), start form (from /openapi.json),
//                       models (lineage, export, download), health (services, nodes, alerts).
//
// Every server string reaches the page through esc() or textContent.

'use strict';

const TOKEN_KEY = 'grokforge.token';
/** Points kept per curve; beyond it neighbouring points are merged (their mean). */
const MAX_POINTS_PER_SERIES = 20000;
/** Jobs asked of `GET /jobs` (newest first) and rows drawn at most. */
const JOB_LIST_LIMIT = 500;
const MODEL_ROWS_LIMIT = 500;
const JOB_POLL_MS = 10000;
const HEALTH_POLL_MS = 15000;
const CHART_REDRAW_MS = 300;
const TABLE_REDRAW_MS = 400;
const WS_PING_MS = 20000;
const WS_BACKOFF_MAX_MS = 10000;
const EXPORT_POLL_DEADLINE_MS = 120000;
const EXPORTS_KEPT = 6;
const JOB_STATUSES = ['queued', 'running', 'completed', 'failed', 'cancelled', 'interrupted'];
const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
const CANCELLABLE = new Set(['queued', 'running', 'interrupted']);
const PALETTE = ['#4f46e5', '#e8590c', '#0c8599', '#c2255c', '#2b8a3e', '#7048e8',
  '#d6336c', '#1971c2', '#b08900', '#5c940d', '#862e9c', '#495057'];

const UNAUTHORIZED = 'The node refused this token (401 Unauthorized). Use the token that ' +
  '“grokforge serve” printed when it started, or the one in <data-dir>/admin-token.';

// ---------------------------------------------------------------------------------------------
// Small helpers

const $ = (selector, root = document) => root.querySelector(selector);

function esc(value) {
  return String(value ?? '').replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  })[c]);
}

/** Escapes `text` and shows its `backticked` parts as code, as the OpenAPI descriptions write them. */
function withCode(text) {
  return esc(text).replace(/`([^`]+)`/g, '<code>$1</code>');
}

// The ids are UUIDv7: their first digits are a timestamp, shared by everything made in the same
// minute, so the short form is the random tail.
const shortId = (id) => (id ? String(id).slice(-8) : '—');

// A loss that is not a number arrives as the string "NaN", "Infinity" or "-Infinity".
const finiteOrNull = (value) => (typeof value === 'number' && Number.isFinite(value) ? value : null);

function fmtNum(value, digits = 4) {
  if (typeof value === 'string') return value;
  if (value === null || value === undefined || Number.isNaN(value)) return '—';
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return value.toExponential(2);
  return Number(value.toPrecision(digits)).toString();
}

/** An axis label: `1e-4` rather than `1.00e-4`. */
function fmtTick(value) {
  if (value === null || value === undefined) return '';
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return value.toExponential().replace('e+', 'e');
  return Number(value.toPrecision(6)).toString();
}

const fmtPct = (fraction) => (fraction === null || fraction === undefined ? '—' : `${(fraction * 100).toFixed(1)}%`);

function fmtBytes(bytes) {
  if (bytes === null || bytes === undefined) return '—';
  const units = ['B', 'KB', 'MB', 'GB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

function fmtDuration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return '—';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

function fmtTime(iso) {
  if (!iso) return '—';
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return esc(iso);
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay ? date.toLocaleTimeString() : date.toLocaleString();
}

function badge(status) {
  return `<span class="badge" data-status="${esc(status)}">${esc(status)}</span>`;
}

function toast(message, kind = 'info') {
  const node = document.createElement('div');
  node.className = `toast ${kind}`;
  node.textContent = message;
  $('#toasts').append(node);
  setTimeout(() => node.remove(), kind === 'error' ? 8000 : 4000);
}

/** Runs `fn` at most once per `ms`, trailing: a burst of calls ends in one call. */
function throttled(fn, ms) {
  let timer = null;
  return () => {
    if (timer !== null) return;
    timer = setTimeout(() => { timer = null; fn(); }, ms);
  };
}

// ---------------------------------------------------------------------------------------------
// HTTP

class ApiError extends Error {
  constructor(status, problem, message) {
    super(message);
    this.status = status;
    this.problem = problem;
  }
}

const state = {
  token: null,
  openapi: null,
  phases: [],
  jobs: new Map(),            // id -> JobRecord
  jobsLoaded: false,
  selectedJobs: new Set(),    // ticked in the jobs table, for comparison
  models: [],
  modelsLoaded: false,
  modelsStale: true,
  selectedModels: new Set(),
  openModel: null,            // id of the model whose detail row is open
  exports: [],                // {id, status, record, url, filename, size, error}
  health: null,
  nodes: [],
  alertsAvailable: true,
  alerts: [],
  view: null,
};

async function api(path, { method = 'GET', body, raw = false, signOutOn401 = true } = {}) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    throw new ApiError(0, null, `cannot reach the node at ${location.origin}: ${error.message}`);
  }
  if (!response.ok) {
    let problem = null;
    try { problem = await response.json(); } catch (_) { /* not a problem body */ }
    const message = problem?.detail || problem?.title || `${response.status} ${response.statusText}`;
    if (response.status === 401 && signOutOn401) signOut(UNAUTHORIZED);
    throw new ApiError(response.status, problem, message);
  }
  if (raw) return response;
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

// ---------------------------------------------------------------------------------------------
// WebSocket

class Live {
  constructor() {
    this.socket = null;
    this.subscriptions = new Map(); // topic -> {onFrame, since: () => number|undefined}
    // Topics unsubscribed on this socket whose `unsubscribed` answer has not come yet: their
    // frames still in flight belong to the old subscription, not to a new one for the topic.
    this.draining = new Set();
    this.backoffMs = 500;
    this.reconnectTimer = null;
    this.pingTimer = null;
    this.stopped = true;
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    clearInterval(this.pingTimer);
    if (this.socket) this.socket.close(1000, 'signed out');
    this.socket = null;
    this.subscriptions.clear();
    this.setStatus('idle', 'offline');
  }

  setStatus(stateName, text) {
    const node = $('#ws-status');
    node.dataset.state = stateName;
    node.textContent = text;
  }

  subscribe(topic, onFrame, since = () => undefined) {
    this.subscriptions.set(topic, { onFrame, since });
    this.sendSubscribe(topic);
  }

  unsubscribe(topic) {
    if (!this.subscriptions.delete(topic)) return;
    if (this.socket && this.socket.readyState === WebSocket.OPEN) this.draining.add(topic);
    this.send({ type: 'unsubscribe', topic });
  }

  sendSubscribe(topic) {
    const subscription = this.subscriptions.get(topic);
    if (!subscription) return;
    const frame = { type: 'subscribe', topic };
    const since = subscription.since();
    if (since !== undefined) frame.since = since;
    this.send(frame);
  }

  send(frame) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(frame));
  }

  connect() {
    if (this.stopped) return;
    this.setStatus('connecting', 'connecting…');
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const socket = new WebSocket(`${scheme}://${location.host}/ws?token=${encodeURIComponent(state.token)}`);
    this.socket = socket;
    socket.onopen = () => {
      this.backoffMs = 500;
      this.draining.clear();
      this.setStatus('live', 'live');
      // Resubscribe everything; job topics carry the last sequence number seen.
      for (const topic of this.subscriptions.keys()) this.sendSubscribe(topic);
      clearInterval(this.pingTimer);
      this.pingTimer = setInterval(() => this.send({ type: 'ping' }), WS_PING_MS);
    };
    socket.onmessage = (message) => {
      let frame;
      try { frame = JSON.parse(message.data); } catch (_) { return; }
      this.onFrame(frame);
    };
    socket.onclose = (event) => {
      clearInterval(this.pingTimer);
      if (this.socket !== socket || this.stopped) return;
      this.socket = null;
      const wait = Math.min(this.backoffMs, WS_BACKOFF_MAX_MS) * (0.75 + Math.random() * 0.5);
      this.backoffMs = Math.min(this.backoffMs * 2, WS_BACKOFF_MAX_MS);
      this.setStatus('reconnecting', `reconnecting${event.reason ? ` (${event.reason})` : ''}…`);
      this.reconnectTimer = setTimeout(() => this.connect(), wait);
      // A handshake refused for a revoked token looks like any other close here: ask the API,
      // which signs out on a 401.
      if (event.code === 1006) api('/openapi.json').catch(() => {});
    };
  }

  onFrame(frame) {
    switch (frame.type) {
      case 'connection_established':
        $('#node-name').textContent = frame.node_id ? `node ${frame.node_id}` : '';
        $('#node-name').title = `role: ${frame.role ?? '?'}`;
        return;
      case 'unsubscribed':
        this.draining.delete(frame.topic);
        return;
      case 'subscription_confirmed':
      case 'pong':
        return;
      case 'error':
        // "not subscribed" answers an unsubscribe as `unsubscribed` would.
        if (frame.topic && this.draining.delete(frame.topic)) return;
        console.warn('websocket error frame', frame);
        if (frame.message || frame.detail) toast(`live updates: ${frame.message || frame.detail}`, 'error');
        return;
      default: {
        if (this.draining.has(frame.topic)) return;
        const subscription = this.subscriptions.get(frame.topic);
        if (subscription) subscription.onFrame(frame);
      }
    }
  }
}

const live = new Live();

// ---------------------------------------------------------------------------------------------
// Curves

/**
 * One variant's curves. Arrays are parallel: `step[i]` with its loss, accuracy, validation
 * loss and accuracy (null where the events had none), and `weight[i]`, how many events the
 * point stands for. Memory is bounded and the resolution stays uniform: when the store holds
 * more than `cap` points, neighbouring pairs are merged (weighted means, step included) and
 * `stride`, the number of events per point, doubles; new events then fill the last point until
 * it holds `stride` of them, so the newest point always shows the latest values.
 */
class SeriesStore {
  constructor(cap = MAX_POINTS_PER_SERIES) {
    this.cap = cap;
    this.stride = 1;
    this.step = [];
    this.loss = [];
    this.acc = [];
    this.valLoss = [];
    this.valAcc = [];
    this.weight = [];
    // The same array objects for the store's life: they are only ever changed in place.
    this.columns = [this.step, this.loss, this.acc, this.valLoss, this.valAcc, this.weight];
  }

  get length() { return this.step.length; }

  arrays() { return this.columns; }

  push(step, loss, acc, valLoss, valAcc) {
    // A resumed attempt restarts from its checkpoint: drop what came after it, so the curve is
    // the one that produced the final weights.
    let n = this.step.length;
    while (n > 0 && this.step[n - 1] >= step) n -= 1;
    if (n < this.step.length) for (const array of this.arrays()) array.length = n;
    // A gap in the curve where a value is missing or not a number.
    const values = [step, finiteOrNull(loss), finiteOrNull(acc), finiteOrNull(valLoss), finiteOrNull(valAcc)];
    const last = this.step.length - 1;
    if (last >= 0 && this.weight[last] < this.stride) {
      this.merge(last, values, 1);
      return;
    }
    for (let k = 0; k < 5; k += 1) this.columns[k].push(values[k]);
    this.weight.push(1);
    if (this.step.length > this.cap) this.compact();
  }

  /** Folds `values` (standing for `weight` events) into point `i`. */
  merge(i, values, weight) {
    const w = this.weight[i];
    const arrays = this.arrays();
    for (let k = 0; k < 5; k += 1) {
      const a = arrays[k][i];
      const b = values[k];
      arrays[k][i] = a === null ? b : b === null ? a : (a * w + b * weight) / (w + weight);
    }
    this.weight[i] = w + weight;
  }

  compact() {
    const arrays = this.arrays();
    let out = 0;
    for (let i = 0; i < this.step.length; i += 2) {
      for (const array of arrays) array[out] = array[i];
      if (i + 1 < this.step.length) {
        this.merge(out, arrays.slice(0, 5).map((array) => array[i + 1]), this.weight[i + 1]);
      }
      out += 1;
    }
    for (const array of arrays) array.length = out;
    this.stride *= 2;
  }
}

/** Exponential moving average with TensorBoard's debiasing; nulls pass through. */
function smooth(values, factor) {
  if (factor <= 0) return values;
  const out = new Array(values.length);
  let last = 0;
  let weight = 0;
  for (let i = 0; i < values.length; i += 1) {
    const v = values[i];
    if (v === null || !Number.isFinite(v)) { out[i] = null; continue; }
    last = last * factor + (1 - factor) * v;
    weight = weight * factor + (1 - factor);
    out[i] = last / weight;
  }
  return out;
}

/**
 * Aligned uPlot data for `curves` ([{xs, ys}]) drawn `pixels` wide. With few points the steps
 * are exact; otherwise the x range is cut into one bucket per pixel and each curve keeps its
 * minimum and maximum per bucket (in the order they occurred), so spikes survive decimation and
 * a curve of any length costs at most 2 × pixels points to draw.
 */
function alignCurves(curves, pixels) {
  let total = 0;
  let xmin = Infinity;
  let xmax = -Infinity;
  for (const { xs } of curves) {
    total += xs.length;
    if (xs.length) {
      xmin = Math.min(xmin, xs[0]);
      xmax = Math.max(xmax, xs[xs.length - 1]);
    }
  }
  if (total === 0) return [[], ...curves.map(() => [])];
  const buckets = Math.max(50, Math.floor(pixels));
  if (total <= 2 * buckets || xmax === xmin) {
    const xsAll = Array.from(new Set(curves.flatMap((c) => c.xs))).sort((a, b) => a - b);
    const index = new Map(xsAll.map((x, i) => [x, i]));
    const columns = curves.map(({ xs, ys }) => {
      const column = new Array(xsAll.length).fill(null);
      for (let i = 0; i < xs.length; i += 1) column[index.get(xs[i])] = ys[i];
      return column;
    });
    return [xsAll, ...columns];
  }
  const width = (xmax - xmin) / buckets;
  const grid = new Array(2 * buckets);
  for (let b = 0; b < buckets; b += 1) {
    grid[2 * b] = xmin + (b + 0.25) * width;
    grid[2 * b + 1] = xmin + (b + 0.75) * width;
  }
  const columns = curves.map(({ xs, ys }) => {
    const column = new Array(2 * buckets).fill(null);
    let bucket = -1;
    let minI = -1;
    let maxI = -1;
    const flush = () => {
      if (bucket < 0 || minI < 0) return;
      const [first, second] = minI <= maxI ? [minI, maxI] : [maxI, minI];
      column[2 * bucket] = ys[first];
      if (second !== first) column[2 * bucket + 1] = ys[second];
    };
    for (let i = 0; i < xs.length; i += 1) {
      const y = ys[i];
      if (y === null) continue;
      const b = Math.min(buckets - 1, Math.floor((xs[i] - xmin) / width));
      if (b !== bucket) { flush(); bucket = b; minI = i; maxI = i; continue; }
      if (y < ys[minI]) minI = i;
      if (y > ys[maxI]) maxI = i;
    }
    flush();
    return column;
  });
  return [grid, ...columns];
}

// ---------------------------------------------------------------------------------------------
// Tracked jobs: the ones whose curves are on screen (the open job and those compared with it)

const tracked = new Map(); // job id -> {id, record, series: Map(variant -> SeriesStore), lastSeq, points, latest, models, color}

function track(jobId) {
  if (tracked.has(jobId)) return tracked.get(jobId);
  const job = {
    id: jobId, record: state.jobs.get(jobId) ?? null, series: new Map(), lastSeq: 0, points: 0,
    latest: null, models: null, missing: null, node: null,
  };
  tracked.set(jobId, job);
  live.subscribe(`job:${jobId}`, (frame) => onJobFrame(job, frame), () => job.lastSeq);
  refreshTrackedRecord(job);
  return job;
}

function untrack(jobId) {
  tracked.delete(jobId);
  live.unsubscribe(`job:${jobId}`);
}

async function refreshTrackedRecord(job) {
  try {
    job.record = await api(`/jobs/${encodeURIComponent(job.id)}`);
    state.jobs.set(job.id, job.record);
    job.missing = null;
    if (job.record.status === 'completed' && job.models === null) loadJobModels(job);
  } catch (error) {
    if (error.status === 404) job.missing = `No job ${job.id} on this node.`;
    else if (error.status !== 401) toast(`job ${shortId(job.id)}: ${error.message}`, 'error');
  }
  renderJobPage();
  scheduleJobsTable();
}

async function loadJobModels(job) {
  try {
    const models = await api('/models');
    job.models = models.filter((m) => m.job_id === job.id);
    mergeModels(models);
  } catch (error) {
    if (error.status !== 401) job.models = null;
  }
  renderJobPage();
}

function onJobFrame(job, frame) {
  if (!tracked.has(job.id)) return;
  // The replay after a reconnect starts after lastSeq; anything at or below it was seen.
  if (typeof frame.seq === 'number') {
    if (frame.seq <= job.lastSeq) return;
    job.lastSeq = frame.seq;
  }
  const data = frame.data ?? {};
  // The record names the node only while it holds the lease; the events say who ran the job.
  if (frame.source_node) job.node = frame.source_node;
  switch (frame.type) {
    case 'training_progress': {
      let series = job.series.get(data.variant);
      if (!series) {
        series = new SeriesStore();
        job.series.set(data.variant, series);
      }
      series.push(data.step, data.loss, data.accuracy, data.val_loss, data.val_accuracy);
      job.points += 1;
      job.latest = data;
      if (job.record && job.record.status !== 'running' && !TERMINAL.has(job.record.status)) {
        job.record.status = 'running';
      }
      if (job.record) job.record.progress = data;
      scheduleChart();
      scheduleJobStats();
      break;
    }
    case 'training_started':
    case 'training_completed':
    case 'training_failed':
    case 'training_cancelled':
      refreshTrackedRecord(job);
      if (frame.type === 'training_completed') loadJobModels(job);
      break;
    case 'model_saved':
      state.modelsStale = true;
      break;
    default:
      scheduleJobStats();
  }
}

// ---------------------------------------------------------------------------------------------
// Job list

function jobProgressFraction(job) {
  if (job.status === 'completed') return 1;
  const p = job.progress;
  if (!p || !p.total_steps) return job.status === 'queued' ? 0 : null;
  const variants = Math.max(1, Number(job.spec?.variants) || 1);
  return Math.min(1, ((p.variant ?? 0) * p.total_steps + p.step) / (variants * p.total_steps));
}

function etaSeconds(job) {
  const p = job.progress;
  if (!p || job.status !== 'running' || !(p.steps_per_second > 0)) return null;
  const variants = Math.max(1, Number(job.spec?.variants) || 1);
  const remaining = (p.total_steps - p.step) + (variants - 1 - (p.variant ?? 0)) * p.total_steps;
  return Math.max(0, remaining) / p.steps_per_second;
}

async function loadJobs() {
  try {
    const jobs = await api(`/jobs?limit=${JOB_LIST_LIMIT}`);
    const seen = new Set();
    for (const job of jobs) {
      seen.add(job.id);
      const known = state.jobs.get(job.id);
      // A live frame may be newer than the list's snapshot of the progress.
      if (known?.progress && job.progress && job.status === 'running' && known.progress.variant === job.progress.variant
        && known.progress.step > job.progress.step) job.progress = known.progress;
      state.jobs.set(job.id, job);
    }
    for (const id of state.jobs.keys()) if (!seen.has(id) && !tracked.has(id)) state.jobs.delete(id);
    state.jobsLoaded = true;
    scheduleJobsTable();
    renderCompareSelect();
  } catch (error) {
    if (error.status !== 401) toast(`jobs: ${error.message}`, 'error');
  }
}

const refreshJobsSoon = throttled(loadJobs, 1000);

function onTrainingUpdate(frame) {
  const data = frame.data ?? {};
  const job = data.job_id ? state.jobs.get(data.job_id) : null;
  if (!job) { refreshJobsSoon(); return; }
  if (frame.type === 'training_progress') {
    job.progress = data;
    if (!TERMINAL.has(job.status)) job.status = 'running';
    scheduleJobsTable();
  } else {
    refreshJobsSoon();
  }
}

function sortedJobs() {
  return Array.from(state.jobs.values()).sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
}

function renderJobsTable() {
  if (state.view !== 'jobs') return;
  const statusFilter = $('#jobs-filter-status').value;
  const phaseFilter = $('#jobs-filter-phase').value;
  const text = $('#jobs-filter-text').value.trim().toLowerCase();
  const all = sortedJobs();
  const shown = all.filter((job) => (!statusFilter || job.status === statusFilter)
    && (!phaseFilter || job.phase === phaseFilter)
    && (!text || job.id.includes(text) || (job.owner_node ?? '').toLowerCase().includes(text)));
  const rows = shown.slice(0, JOB_LIST_LIMIT).map((job) => {
    const fraction = jobProgressFraction(job);
    const p = job.progress;
    const barClass = job.status === 'completed' ? 'done' : job.status === 'failed' ? 'failed' : '';
    const stepText = p ? `step ${p.step}/${p.total_steps}${(job.spec?.variants ?? 1) > 1 ? ` · v${p.variant}` : ''}` : '';
    const cancel = CANCELLABLE.has(job.status) && !job.cancel_requested
      ? `<button class="small danger" data-action="cancel" data-job-id="${esc(job.id)}" data-testid="cancel-job">Cancel</button>`
      : job.cancel_requested && !TERMINAL.has(job.status) ? '<span class="muted small">cancelling…</span>' : '';
    return `<tr data-testid="job-row" data-job-id="${esc(job.id)}" data-status="${esc(job.status)}">
      <td><input type="checkbox" data-action="select" data-job-id="${esc(job.id)}" ${state.selectedJobs.has(job.id) ? 'checked' : ''} aria-label="select for comparison"></td>
      <td><a href="#/job/${esc(job.id)}" class="mono" data-testid="job-link" title="${esc(job.id)}">${esc(shortId(job.id))}</a></td>
      <td>${esc(job.phase)}</td>
      <td>${badge(job.status)}</td>
      <td><div class="progress-cell" title="${esc(stepText)}"><div class="bar ${barClass}"><span style="width:${((fraction ?? 0) * 100).toFixed(1)}%"></span></div><span class="pct">${fraction === null ? '—' : `${Math.round(fraction * 100)}%`}</span></div></td>
      <td class="num">${fmtNum(p?.loss)}</td>
      <td class="num">${fmtPct(p?.val_accuracy)}</td>
      <td class="num">${esc(job.attempts)}/${esc(job.max_attempts)}</td>
      <td class="mono small" title="${esc(job.owner_node ?? '')}">${esc(job.owner_node ? String(job.owner_node).slice(0, 14) : '—')}</td>
      <td class="small">${fmtTime(job.created_at)}</td>
      <td>${cancel}</td></tr>`;
  });
  $('#jobs-body').innerHTML = rows.join('');
  $('#jobs-empty').hidden = !state.jobsLoaded || all.length > 0;
  const footer = all.length >= JOB_LIST_LIMIT ? `the newest ${JOB_LIST_LIMIT} jobs` : `${all.length} jobs`;
  $('#jobs-footer').textContent = !state.jobsLoaded ? 'loading jobs…'
    : shown.length === all.length ? footer : `${shown.length} of ${footer}`;
  $('#jobs-compare').disabled = state.selectedJobs.size < 1;
}

const scheduleJobsTable = throttled(renderJobsTable, TABLE_REDRAW_MS);

async function cancelJob(id) {
  try {
    const record = await api(`/jobs/${encodeURIComponent(id)}/cancel`, { method: 'POST' });
    state.jobs.set(id, record);
    const job = tracked.get(id);
    if (job) job.record = record;
    toast(`cancel requested for job ${shortId(id)}`);
  } catch (error) {
    if (error.status !== 401) toast(`cancel: ${error.message}`, 'error');
  }
  scheduleJobsTable();
  renderJobPage();
}

// ---------------------------------------------------------------------------------------------
// Job page

const jobPage = {
  id: null,
  compare: [],
  charts: { loss: null, acc: null },
  chartKeys: { loss: '', acc: '' },
  zoomed: { loss: false, acc: false },
};

function jobHash(id, compare) {
  return `#/job/${id}${compare.length ? `?with=${compare.join(',')}` : ''}`;
}

function showJob(id, compare) {
  const wanted = [id, ...compare.filter((c) => c !== id)];
  for (const jobId of Array.from(tracked.keys())) if (!wanted.includes(jobId)) untrack(jobId);
  if (jobPage.id !== id) {
    jobPage.zoomed = { loss: false, acc: false };
    $('#job-models').innerHTML = '';
  }
  jobPage.id = id;
  jobPage.compare = wanted.slice(1);
  for (const jobId of wanted) track(jobId);
  renderCompareSelect();
  renderJobPage();
  renderCharts();
}

function leaveJobPage() {
  for (const jobId of Array.from(tracked.keys())) untrack(jobId);
  jobPage.id = null;
  for (const key of ['loss', 'acc']) {
    jobPage.charts[key]?.destroy();
    jobPage.charts[key] = null;
    jobPage.chartKeys[key] = '';
  }
}

function jobColor(jobIndex, variant) {
  // The open job's variants take the palette in order; compared jobs continue after them.
  const base = jobIndex === 0 ? 0 : 4 + jobIndex * 2;
  return PALETTE[(base + variant) % PALETTE.length];
}

function renderJobPage() {
  if (state.view !== 'job' || !jobPage.id) return;
  const job = tracked.get(jobPage.id);
  if (!job) return;
  const record = job.record;
  $('#job-id').textContent = shortId(job.id);
  $('#job-id').title = job.id;
  $('#job-missing').hidden = !job.missing;
  $('#job-missing').textContent = job.missing ?? '';
  const status = record?.status ?? '';
  $('#job-status').textContent = status;
  $('#job-status').dataset.status = status;
  $('#job-phase').textContent = record?.phase ?? '';
  $('#job-phase').hidden = !record;
  $('#job-cancel').hidden = !record || !CANCELLABLE.has(status) || record.cancel_requested;

  renderJobStats();

  const details = $('#job-details');
  if (record) {
    const spec = record.spec ?? {};
    const rows = [
      ['id', `<code>${esc(record.id)}</code>`],
      ['phase', esc(record.phase)],
      ['status', `${badge(record.status)}${record.cancel_requested && !TERMINAL.has(record.status) ? ' <span class="muted">cancel requested</span>' : ''}`],
      ['attempts', `${esc(record.attempts)} of ${esc(record.max_attempts)}`],
      ['node', esc(record.owner_node ?? (job.node ? `${job.node} (last)` : '—'))],
      ['priority', esc(record.priority)],
      ['created', fmtTime(record.created_at)],
      ['started', fmtTime(record.started_at)],
      ['finished', fmtTime(record.finished_at)],
      ['dataset', esc(spec.dataset ?? (spec.text ? 'text corpus' : 'default'))],
      ['model', esc([spec.preset, spec.d_model && `d=${spec.d_model}`, spec.n_layers && `${spec.n_layers} layers`].filter(Boolean).join(' · '))],
      ['training', esc(`${spec.steps ?? '?'} steps × ${spec.variants ?? '?'} variants, batch ${spec.batch_size ?? '?'}, lr ${spec.lr ?? '?'}, ${spec.optimizer ?? ''}${spec.weight_decay != null ? `, weight decay ${spec.weight_decay}` : ''}`)],
      ['grokfast', esc(`${spec.grokfast ?? '?'}${spec.grokfast === 'ema' ? ` (α ${spec.alpha}, λ ${spec.lamb ?? 'default'})` : ''}`)],
    ];
    if (record.error) rows.push(['error', `<span class="field-error">${esc(record.error)}</span>`]);
    details.innerHTML = rows.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${v}</dd>`).join('');
    const errors = record.attempt_errors ?? [];
    $('#job-attempts-card').hidden = errors.length === 0;
    $('#job-attempts').innerHTML = `<ul class="errors">${errors.map((e) => `<li>${esc(typeof e === 'string' ? e : `attempt ${e.attempt ?? '?'}: ${e.error ?? e.message ?? JSON.stringify(e)}`)}</li>`).join('')}</ul>`;
  } else {
    details.innerHTML = '';
    $('#job-attempts-card').hidden = true;
  }

  const modelsBox = $('#job-models');
  if (job.models && job.models.length) {
    modelsBox.innerHTML = `<ul class="model-list">${job.models.map((m) => `
      <li data-testid="job-model" data-model-id="${esc(m.id)}"><strong>${esc(m.name)}</strong> <span class="muted">v${esc(m.version)}</span>
        ${m.winner ? '<span class="winner">★ winner</span>' : ''}
        <span class="sha" title="${esc(m.sha256)}">${esc(String(m.sha256).slice(0, 12))}</span>
        <span class="muted small">${fmtBytes(m.size_bytes)}</span></li>`).join('')}</ul>
      <p><a href="#/models?job=${esc(job.id)}" data-testid="job-models-link">Open in the registry to export →</a></p>`;
  } else if (record?.status === 'completed') {
    modelsBox.innerHTML = '<p class="muted">Loading models…</p>';
  } else if (!modelsBox.innerHTML) {
    modelsBox.innerHTML = '<p class="muted">The job\'s models appear here once it completes.</p>';
  }

  $('#compare-chips').innerHTML = jobPage.compare.map((id, i) => `
    <span class="chip" data-testid="compare-chip"><span class="swatch" style="background:${jobColor(i + 1, 0)}"></span>
      <a href="#/job/${esc(id)}" class="mono">${esc(shortId(id))}</a>
      <button type="button" data-action="uncompare" data-job-id="${esc(id)}" title="remove">×</button></span>`).join('');
}

function renderJobStats() {
  if (state.view !== 'job' || !jobPage.id) return;
  const job = tracked.get(jobPage.id);
  if (!job) return;
  const record = job.record;
  const merged = record ? { ...record, progress: job.latest ?? record.progress } : null;
  const fraction = merged ? jobProgressFraction(merged) : null;
  const p = merged?.progress;
  $('#job-progress').textContent = fraction === null ? '—' : fmtPct(fraction);
  const bar = $('#job-progress-bar');
  bar.style.width = `${((fraction ?? 0) * 100).toFixed(1)}%`;
  bar.parentElement.className = `bar ${record?.status === 'completed' ? 'done' : record?.status === 'failed' ? 'failed' : ''}`;
  const variants = Number(record?.spec?.variants) || 1;
  $('#job-step').textContent = p ? `step ${p.step} of ${p.total_steps} · variant ${p.variant ?? 0} (${variants} in all)` : '';
  const running = record?.status === 'running';
  let rate = '—';
  if (running && p?.steps_per_second) {
    rate = `${fmtNum(p.steps_per_second, 3)} steps/s`;
  } else if (record?.status === 'completed' && record.started_at && record.finished_at && p?.total_steps) {
    const seconds = (Date.parse(record.finished_at) - Date.parse(record.started_at)) / 1000;
    if (seconds > 0) rate = `${fmtNum((p.total_steps * variants) / seconds, 3)} steps/s`;
  }
  $('#job-rate').textContent = rate;
  $('#job-rate-note').textContent = running ? 'now' : rate === '—' ? '' : 'average over the run';
  const eta = merged ? etaSeconds(merged) : null;
  $('#job-eta').textContent = eta === null ? (record?.status === 'completed' ? 'done' : '—') : fmtDuration(eta);
  let etaNote = '';
  if (eta !== null) {
    etaNote = `around ${new Date(Date.now() + eta * 1000).toLocaleTimeString()}`;
  } else if (record?.started_at && record?.finished_at) {
    etaNote = `took ${fmtDuration((Date.parse(record.finished_at) - Date.parse(record.started_at)) / 1000)}`;
  }
  $('#job-eta-note').textContent = etaNote;
  $('#job-loss').textContent = fmtNum(p?.loss);
  $('#job-val-acc').textContent = fmtPct(p?.val_accuracy);
  $('#point-count').textContent = String(job.points);
  $('#point-count').dataset.points = String(job.points);
  $('#job-seq').textContent = String(job.lastSeq);
}

const scheduleJobStats = throttled(renderJobStats, 200);

function chartCurves(kind) {
  // kind: 'loss' → training loss (solid), validation loss (dashed);
  //       'acc'  → validation accuracy (solid), training accuracy (dashed).
  const smoothing = Number($('#smoothing').value);
  const showSecondary = $('#show-secondary').checked;
  const [primary, secondary] = kind === 'loss' ? ['loss', 'valLoss'] : ['valAcc', 'acc'];
  const names = { loss: 'loss', valLoss: 'val loss', acc: 'train acc', valAcc: 'val acc' };
  const ids = [jobPage.id, ...jobPage.compare];
  const curves = [];
  ids.forEach((id, jobIndex) => {
    const job = tracked.get(id);
    if (!job) return;
    const variants = Array.from(job.series.keys()).sort((a, b) => a - b);
    for (const variant of variants) {
      const series = job.series.get(variant);
      const prefix = ids.length > 1 ? `${shortId(id)} v${variant}` : `variant ${variant}`;
      for (const metric of showSecondary ? [primary, secondary] : [primary]) {
        const xs = [];
        const ys = [];
        const values = series[metric];
        for (let i = 0; i < series.length; i += 1) {
          const v = values[i];
          if (v === null || !Number.isFinite(v) || (kind === 'loss' && v <= 0 && $('#loss-log').checked)) continue;
          xs.push(series.step[i]);
          ys.push(v);
        }
        if (!xs.length) continue;
        curves.push({
          xs, ys: smooth(ys, smoothing), label: `${prefix} ${names[metric]}`,
          color: jobColor(jobIndex, variant), dash: metric === secondary ? [6, 4] : undefined,
          width: metric === primary ? 2 : 1.25,
        });
      }
    }
  });
  return curves;
}

function renderCharts() {
  if (state.view !== 'job' || !jobPage.id || typeof uPlot === 'undefined') return;
  for (const kind of ['loss', 'acc']) {
    const container = $(kind === 'loss' ? '#chart-loss' : '#chart-acc');
    const width = Math.max(300, container.clientWidth);
    const curves = chartCurves(kind);
    const data = alignCurves(curves, width - 60);
    const log = kind === 'loss' && $('#loss-log').checked;
    const key = `${log}|${curves.map((c) => c.label).join('|')}`;
    container.dataset.curves = String(curves.length);
    container.dataset.points = String(data[0].length);
    if (jobPage.charts[kind] && jobPage.chartKeys[kind] === key) {
      jobPage.charts[kind].setData(data, !jobPage.zoomed[kind]);
      continue;
    }
    jobPage.charts[kind]?.destroy();
    container.innerHTML = '';
    const opts = {
      width,
      height: 300,
      scales: {
        x: { time: false },
        y: log ? { distr: 3, log: 10 } : (kind === 'acc' ? { range: [0, 1.02] } : {}),
      },
      axes: [
        { label: 'step', stroke: '#6a7587', grid: { stroke: '#eef1f5' }, ticks: { stroke: '#e2e7ee' } },
        {
          label: kind === 'loss' ? 'loss' : 'accuracy', stroke: '#6a7587', size: 60,
          grid: { stroke: '#eef1f5' }, ticks: { stroke: '#e2e7ee' },
          values: kind === 'acc' ? (u, ticks) => ticks.map((t) => `${Math.round(t * 100)}%`)
            : (u, ticks) => ticks.map(fmtTick),
          splits: log ? logSplits : undefined,
        },
      ],
      series: [
        { label: 'step', value: (u, v) => (v === null ? '—' : Math.round(v)) },
        ...curves.map((c) => ({
          label: c.label, stroke: c.color, width: c.width, dash: c.dash, spanGaps: true,
          points: { show: false },
          value: (u, v) => (v === null ? '—' : kind === 'acc' ? fmtPct(v) : fmtNum(v)),
        })),
      ],
      cursor: { drag: { x: true, y: false }, points: { size: 6 } },
      legend: { live: true },
      hooks: { setSelect: [(u) => { if (u.select.width > 0) jobPage.zoomed[kind] = true; }] },
    };
    jobPage.charts[kind] = new uPlot(opts, data, container);
    jobPage.chartKeys[kind] = key;
    jobPage.charts[kind].over.addEventListener('dblclick', () => { jobPage.zoomed[kind] = false; });
    if (!curves.length) {
      const note = document.createElement('p');
      note.className = 'muted small';
      note.textContent = 'Waiting for training progress…';
      container.prepend(note);
    }
  }
}

const scheduleChart = throttled(renderCharts, CHART_REDRAW_MS);

/** Log-axis ticks: the powers of ten over a wide range, 1-2-5 steps over a narrow one. */
function logSplits(u, axisIndex, min, max) {
  if (!(min > 0 && max > 0)) return [];
  const low = Math.floor(Math.log10(min));
  const high = Math.ceil(Math.log10(max));
  const mantissas = high - low >= 3 ? [1] : [1, 2, 5];
  const splits = [];
  for (let exponent = low; exponent <= high; exponent += 1) {
    for (const m of mantissas) {
      const value = Number((m * 10 ** exponent).toPrecision(12));
      if (value >= min * 0.999 && value <= max * 1.001) splits.push(value);
    }
  }
  return splits;
}

function renderCompareSelect() {
  const select = $('#compare-select');
  const current = new Set([jobPage.id, ...jobPage.compare]);
  const options = sortedJobs().filter((job) => !current.has(job.id)).slice(0, 200)
    .map((job) => `<option value="${esc(job.id)}">${esc(shortId(job.id))} · ${esc(job.phase)} · ${esc(job.status)}</option>`);
  select.innerHTML = `<option value="">choose a job…</option>${options.join('')}`;
}

// ---------------------------------------------------------------------------------------------
// Start form, built from the OpenAPI document

function resolveSchema(schema, doc) {
  // Follows a $ref, and looks through allOf / oneOf / anyOf wrappers utoipa writes around refs
  // (nullable: a oneOf with a `null` branch).
  let nullable = false;
  let current = schema ?? {};
  const extra = { default: current.default, description: current.description };
  for (let depth = 0; depth < 8; depth += 1) {
    if (current.$ref) {
      const name = current.$ref.split('/').pop();
      current = doc.components?.schemas?.[name] ?? {};
      continue;
    }
    const wrapper = current.allOf ?? current.oneOf ?? current.anyOf;
    if (wrapper && !wrapper.every((branch) => branch.enum || branch.const !== undefined)) {
      const branches = wrapper.filter((branch) => branch.type !== 'null');
      if (branches.length < wrapper.length) nullable = true;
      if (branches.length === 1) {
        if (extra.default === undefined) extra.default = current.default;
        if (!extra.description) extra.description = current.description;
        current = branches[0];
        continue;
      }
    }
    break;
  }
  let type = current.type;
  if (Array.isArray(type)) {
    if (type.includes('null')) nullable = true;
    type = type.find((t) => t !== 'null');
  }
  let values = current.enum ?? null;
  const branches = current.oneOf ?? current.anyOf;
  if (!values && branches && branches.every((b) => b.enum || b.const !== undefined)) {
    values = branches.flatMap((b) => b.enum ?? [b.const]);
  }
  if (values) values = values.filter((v) => v !== null);
  return {
    type: values ? 'enum' : type,
    values,
    nullable,
    minimum: current.minimum,
    maximum: current.maximum,
    default: extra.default ?? current.default,
    description: extra.description ?? current.description ?? '',
  };
}

function startFields() {
  const doc = state.openapi;
  const schema = resolveSchemaObject(doc?.components?.schemas?.StartJobRequest, doc);
  const properties = schema?.properties ?? {};
  return Object.entries(properties).map(([name, property]) => ({ name, ...resolveSchema(property, doc) }));
}

function resolveSchemaObject(schema, doc) {
  let current = schema;
  for (let depth = 0; depth < 4 && current?.$ref; depth += 1) {
    current = doc.components?.schemas?.[current.$ref.split('/').pop()];
  }
  return current;
}

function fieldDefaultText(field) {
  if (field.default === undefined || field.default === null) return '';
  return typeof field.default === 'object' ? JSON.stringify(field.default) : String(field.default);
}

function renderStartForm() {
  const container = $('#start-fields');
  if (!state.openapi) {
    container.innerHTML = '<p class="muted">Loading the OpenAPI document…</p>';
    return;
  }
  const fields = startFields();
  if (!fields.length) {
    container.innerHTML = '<p class="field-error">The node\'s OpenAPI document has no StartJobRequest schema.</p>';
    return;
  }
  container.innerHTML = fields.map((field) => {
    const id = `field-${field.name}`;
    const def = fieldDefaultText(field);
    const typeLabel = field.type === 'enum' ? 'choice' : (field.type ?? 'value') + (field.nullable ? ', optional' : '');
    let control;
    if (field.type === 'boolean') {
      control = `<div class="checkbox"><input type="checkbox" id="${id}" name="${esc(field.name)}" data-testid="${id}" ${field.default ? 'checked' : ''}><span class="muted small">default ${esc(def || 'false')}</span></div>`;
    } else if (field.type === 'enum') {
      const options = field.values.map((v) => `<option value="${esc(v)}" ${String(v) === def ? 'selected' : ''}>${esc(v)}</option>`);
      const blank = field.nullable || def === '' ? `<option value="" ${def === '' ? 'selected' : ''}>(default)</option>` : '';
      control = `<select id="${id}" name="${esc(field.name)}" data-testid="${id}">${blank}${options.join('')}</select>`;
    } else {
      const numeric = field.type === 'integer' || field.type === 'number';
      const attrs = numeric ? `type="number" step="${field.type === 'integer' ? '1' : 'any'}"` : 'type="text"';
      const placeholder = def === '' ? (field.nullable ? 'default: automatic' : '') : '';
      control = `<input ${attrs} id="${id}" name="${esc(field.name)}" data-testid="${id}" value="${esc(def)}" placeholder="${esc(placeholder)}" spellcheck="false">`;
    }
    return `<div class="field" data-field="${esc(field.name)}">
      <label for="${id}">${esc(field.name)} <span class="type">${esc(typeLabel)}</span></label>
      ${control}
      <div class="field-error" id="error-${esc(field.name)}" data-testid="field-error-${esc(field.name)}" role="alert" hidden></div>
      ${field.description ? `<div class="help">${withCode(field.description)}</div>` : ''}
    </div>`;
  }).join('');
}

function renderPhaseSelect() {
  const select = $('#start-phase');
  const previous = select.value;
  select.innerHTML = state.phases.map((p) => `<option value="${esc(p.name)}" ${p.has_recipe ? '' : 'disabled'}>${esc(p.name)}${p.has_recipe ? '' : ' (no recipe yet)'}</option>`).join('');
  const firstRunnable = state.phases.find((p) => p.has_recipe)?.name ?? '';
  select.value = state.phases.some((p) => p.name === previous && p.has_recipe) ? previous : firstRunnable;
  const phaseFilters = [$('#jobs-filter-phase'), $('#models-filter-phase')];
  for (const filter of phaseFilters) {
    const value = filter.value;
    filter.innerHTML = `<option value="">all phases</option>${state.phases.map((p) => `<option value="${esc(p.name)}">${esc(p.name)}</option>`).join('')}`;
    filter.value = value;
  }
}

/** The body: only fields whose input differs from the documented default. */
function startBody() {
  const body = {};
  for (const field of startFields()) {
    const input = document.getElementById(`field-${field.name}`);
    if (!input) continue;
    const def = fieldDefaultText(field);
    if (field.type === 'boolean') {
      if (input.checked !== Boolean(field.default)) body[field.name] = input.checked;
      continue;
    }
    const raw = input.value.trim();
    if (raw === def || (raw === '' && field.nullable)) continue;
    if (raw === '') { body[field.name] = null; continue; }
    if (field.type === 'integer' || field.type === 'number') {
      const number = Number(raw);
      // Sent as typed when it is no number, so the node's answer names the field.
      body[field.name] = Number.isFinite(number) ? number : raw;
    } else {
      body[field.name] = raw;
    }
  }
  return body;
}

function clearStartErrors() {
  for (const node of document.querySelectorAll('#start-fields .field-error')) { node.hidden = true; node.textContent = ''; }
  for (const node of document.querySelectorAll('#start-fields .field.invalid')) node.classList.remove('invalid');
  $('#start-message').hidden = true;
}

/** The field a 422 problem is about: its `field` member, else a `name` quoted in its detail. */
function problemField(problem) {
  if (!problem) return null;
  const known = new Set(startFields().map((f) => f.name));
  if (problem.field) {
    const root = String(problem.field).split(/[.[]/)[0];
    if (known.has(root)) return root;
  }
  for (const match of String(problem.detail ?? '').matchAll(/`([a-z_0-9]+)`/g)) {
    if (known.has(match[1])) return match[1];
  }
  return null;
}

async function submitStart(event) {
  event.preventDefault();
  clearStartErrors();
  const phase = $('#start-phase').value;
  if (!phase) {
    $('#start-message').textContent = 'Choose a phase first (the list comes from GET /phases).';
    $('#start-message').hidden = false;
    return;
  }
  const body = startBody();
  const button = $('#start-submit');
  button.disabled = true;
  try {
    const job = await api(`/phases/${encodeURIComponent(phase)}/start`, { method: 'POST', body });
    state.jobs.set(job.id, job);
    toast(`queued job ${shortId(job.id)}`);
    location.hash = `#/job/${job.id}`;
  } catch (error) {
    if (error.status === 401) return;
    const field = error.status === 422 || error.status === 400 ? problemField(error.problem) : null;
    const target = field && document.getElementById(`error-${field}`);
    if (target) {
      target.textContent = error.problem.detail ?? error.message;
      target.hidden = false;
      target.closest('.field').classList.add('invalid');
      target.closest('.field').scrollIntoView({ block: 'center', behavior: 'smooth' });
    } else {
      const extra = error.problem?.phases_with_recipe ? ` Phases with a recipe: ${error.problem.phases_with_recipe.join(', ')}.` : '';
      $('#start-message').textContent = `${error.message}${extra}`;
      $('#start-message').hidden = false;
    }
  } finally {
    button.disabled = false;
  }
}

function markChangedFields() {
  for (const field of startFields()) {
    const input = document.getElementById(`field-${field.name}`);
    if (!input) continue;
    const changed = field.type === 'boolean' ? input.checked !== Boolean(field.default) : input.value.trim() !== fieldDefaultText(field);
    input.closest('.field').classList.toggle('changed', changed);
  }
}

// ---------------------------------------------------------------------------------------------
// Models

function mergeModels(models) {
  state.models = models;
  state.modelsLoaded = true;
  state.modelsStale = false;
  scheduleModelsTable();
}

async function loadModels() {
  try {
    mergeModels(await api('/models'));
  } catch (error) {
    if (error.status !== 401) toast(`models: ${error.message}`, 'error');
  }
}

function modelFilterJob() {
  const { params } = parseHash();
  return params.get('job');
}

function renderModelsTable() {
  if (state.view !== 'models') return;
  const phase = $('#models-filter-phase').value;
  const winnersOnly = $('#models-filter-winner').checked;
  const text = $('#models-filter-text').value.trim().toLowerCase();
  const job = modelFilterJob();
  const byId = new Map(state.models.map((m) => [m.id, m]));
  const shown = state.models.filter((m) => (!phase || m.phase === phase) && (!winnersOnly || m.winner)
    && (!job || m.job_id === job)
    && (!text || [m.name, m.id, m.job_id ?? '', ...(m.tags ?? [])].some((s) => String(s).toLowerCase().includes(text))))
    .slice().reverse(); // newest first
  const rows = shown.slice(0, MODEL_ROWS_LIMIT).map((m) => {
    const parents = (m.parent_ids ?? []).map((id) => {
      const parent = byId.get(id);
      return `<span title="${esc(id)}">← ${parent ? `${esc(parent.name)} v${esc(parent.version)}` : `<span class="mono">${esc(shortId(id))}</span>`}</span>`;
    });
    const lineage = [
      m.job_id ? `<span>job <a href="#/job/${esc(m.job_id)}" class="mono">${esc(shortId(m.job_id))}</a></span>` : '',
      ...parents,
    ].filter(Boolean).join('') || '<span class="muted">from scratch</span>';
    let row = `<tr data-testid="model-row" data-model-id="${esc(m.id)}" data-job-id="${esc(m.job_id ?? '')}">
      <td><input type="checkbox" data-action="select-model" data-model-id="${esc(m.id)}" ${state.selectedModels.has(m.id) ? 'checked' : ''} aria-label="select for export"></td>
      <td><a href="#" data-action="toggle-model" data-model-id="${esc(m.id)}"><strong>${esc(m.name)}</strong></a></td>
      <td class="num">v${esc(m.version)}</td>
      <td>${esc(m.phase)}</td>
      <td>${m.winner ? '<span class="winner" data-testid="winner">★ winner</span>' : ''}</td>
      <td>${(m.tags ?? []).map((t) => `<span class="tag">${esc(t)}</span>`).join('')}</td>
      <td><div class="lineage">${lineage}</div></td>
      <td><span class="sha" title="${esc(m.sha256)}">${esc(String(m.sha256 ?? '').slice(0, 12))}…</span></td>
      <td class="num">${fmtBytes(m.size_bytes)}</td>
      <td class="small">${fmtTime(m.created_at)}</td>
      <td><button type="button" class="small" data-action="export-model" data-model-id="${esc(m.id)}" data-testid="export-button">Export</button></td></tr>`;
    if (state.openModel === m.id) {
      const files = (m.files ?? []).map((f) => `<tr><td class="mono">${esc(f.name)}</td><td>${fmtBytes(f.size_bytes)}</td><td class="sha">${esc(f.sha256)}</td></tr>`).join('');
      row += `<tr class="detail-row"><td></td><td colspan="10">
        <div><span class="muted">id</span> <code>${esc(m.id)}</code> · <span class="muted">format</span> ${esc(m.format)}</div>
        <table class="files">${files}</table>
        <pre class="metrics-json">${esc(summariseMetrics(m.metrics))}</pre></td></tr>`;
    }
    return row;
  });
  $('#models-body').innerHTML = rows.join('');
  $('#models-empty').hidden = !state.modelsLoaded || shown.length > 0;
  $('#models-footer').innerHTML = !state.modelsLoaded ? 'loading models…' : `${shown.length} of ${state.models.length} models${job ? ` · from job <span class="mono">${esc(shortId(job))}</span> <a href="#/models">show all</a>` : ''}`;
  $('#export-selected').disabled = state.selectedModels.size === 0;
}

const scheduleModelsTable = throttled(renderModelsTable, TABLE_REDRAW_MS);

/** Metrics with long histories cut to their last values, so the detail row stays small. */
function summariseMetrics(metrics) {
  const cut = (value) => {
    if (Array.isArray(value)) return value.length > 4 ? [`… ${value.length - 3} more`, ...value.slice(-3).map(cut)] : value.map(cut);
    if (value && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, cut(v)]));
    return value;
  };
  return JSON.stringify(cut(metrics ?? {}), null, 1);
}

async function exportModels(modelIds) {
  const format = $('#export-format').value;
  const entry = { id: null, status: 'exporting', modelIds, format, url: null, filename: null, size: null, error: null };
  state.exports.unshift(entry);
  renderExports();
  try {
    const record = await api('/models/export', { method: 'POST', body: { model_ids: modelIds, format } });
    entry.id = record.id;
    entry.record = record;
    entry.status = 'packaging';
    renderExports();
    await fetchExport(entry);
  } catch (error) {
    entry.status = 'failed';
    entry.error = error.message;
  }
  // Keep a few downloads' blobs; release the rest.
  for (const old of state.exports.splice(EXPORTS_KEPT)) if (old.url) URL.revokeObjectURL(old.url);
  renderExports();
}

/** Polls `GET /exports/{id}` until the package is there, then holds it as a blob to save. */
async function fetchExport(entry) {
  const deadline = Date.now() + EXPORT_POLL_DEADLINE_MS;
  let wait = 250;
  for (;;) {
    try {
      const response = await api(`/exports/${encodeURIComponent(entry.id)}`, { raw: true });
      const blob = await response.blob();
      const disposition = response.headers.get('content-disposition') ?? '';
      entry.filename = /filename="([^"]+)"/.exec(disposition)?.[1] ?? `grokforge-export-${entry.id}.zip`;
      entry.size = blob.size;
      entry.url = URL.createObjectURL(blob);
      entry.status = 'ready';
      return;
    } catch (error) {
      const retry = error.status === 404 || error.status === 503 || error.status === 0;
      if (!retry || Date.now() > deadline) throw error;
    }
    await new Promise((resolve) => setTimeout(resolve, wait));
    wait = Math.min(wait * 2, 3000);
  }
}

function renderExports() {
  $('#exports').innerHTML = state.exports.map((entry) => {
    const names = entry.modelIds.map((id) => {
      const model = state.models.find((m) => m.id === id);
      return model ? `${model.name} v${model.version}` : shortId(id);
    }).join(', ');
    const head = `<div class="grow"><strong>Export${entry.id ? ` <span class="mono">${esc(shortId(entry.id))}</span>` : ''}</strong>
      <span class="muted">· ${esc(names)} · ${esc(entry.format)}</span>`;
    if (entry.status === 'ready') {
      return `<div class="export-item" data-testid="export-item" data-status="ready">${head}
        <div class="muted small">${esc(entry.filename)} · ${fmtBytes(entry.size)}</div></div>
        <a class="button primary" href="${entry.url}" download="${esc(entry.filename)}" data-testid="download-export">Download</a></div>`;
    }
    if (entry.status === 'failed') {
      return `<div class="export-item failed" data-testid="export-item" data-status="failed">${head}
        <div class="field-error">${esc(entry.error)}</div></div></div>`;
    }
    return `<div class="export-item" data-testid="export-item" data-status="${esc(entry.status)}">${head}
      <div class="muted small">${entry.status === 'exporting' ? 'asking the node to package…' : 'waiting for the package…'}</div></div></div>`;
  }).join('');
}

// ---------------------------------------------------------------------------------------------
// Health

async function loadHealth() {
  // /health answers 503 with the report itself when the node is unhealthy.
  try {
    const response = await fetch('/health', { headers: { Authorization: `Bearer ${state.token}` } });
    const body = await response.json();
    state.health = body.services ? body : { status: 'unhealthy', problem: body };
  } catch (error) {
    state.health = { status: 'unhealthy', problem: { detail: `cannot reach the node: ${error.message}` } };
  }
  try {
    state.nodes = await api('/cluster/nodes');
  } catch (error) {
    state.nodes = [];
  }
  if (state.alertsAvailable) {
    try {
      const alerts = await api('/alerts');
      state.alerts = Array.isArray(alerts) ? alerts : (alerts?.alerts ?? alerts?.firing ?? []);
    } catch (error) {
      // No alerting on this node yet: hide the panel rather than show an error.
      if (error.status === 404 || error.status === 405 || error.status === 501) state.alertsAvailable = false;
    }
  }
  renderHealth();
}

function renderHealth() {
  const health = state.health;
  const overall = health?.status ?? '';
  $('#health-dot').dataset.state = overall;
  $('#health-dot').title = overall;
  if (state.view !== 'health' || !health) return;
  $('#health-overall').textContent = overall;
  $('#health-overall').dataset.status = overall;
  $('#health-checked').textContent = health.checked_at ? `checked ${fmtTime(health.checked_at)}` : (health.problem?.detail ?? '');
  const rows = (entries, withDeps) => Object.entries(entries ?? {}).map(([name, c]) => `<tr data-testid="health-row" data-name="${esc(name)}">
    <td><strong>${esc(name)}</strong></td><td>${badge(c.status)}</td><td class="small">${esc(c.reason ?? '')}</td>
    ${withDeps ? `<td class="small muted">${esc((c.depends_on ?? []).join(', '))}</td>` : ''}
    <td class="num small">${esc(c.latency_ms ?? '')} ms</td></tr>`).join('');
  $('#health-services').innerHTML = rows(health.services, true) || `<tr><td colspan="5" class="muted">${esc(health.problem?.detail ?? 'no report')}</td></tr>`;
  $('#health-dependencies').innerHTML = rows(health.dependencies, false);
  $('#health-nodes').innerHTML = state.nodes.map((n) => `<tr data-testid="node-row">
    <td class="mono">${esc(n.node_id)}</td><td>${esc(n.name)}</td><td>${esc(n.version)}</td>
    <td>${n.address ? `<a href="${esc(n.address)}">${esc(n.address)}</a>` : '—'}</td><td>${fmtTime(n.started_at)}</td></tr>`).join('')
    || '<tr><td colspan="5" class="muted">no nodes reported</td></tr>';
  $('#alerts-panel').hidden = !state.alertsAvailable;
  $('#alerts-list').innerHTML = state.alerts.length ? state.alerts.map((a) => {
    const severity = a.severity ?? 'warning';
    const since = a.started_at ?? a.fired_at ?? a.since ?? a.active_since ?? a.created_at;
    return `<div class="alert" data-testid="alert">${badge(severity)}<div><strong>${esc(a.rule ?? a.name ?? 'alert')}</strong>
      <div>${esc(a.message ?? a.summary ?? a.description ?? '')}</div>
      <div class="muted small">${since ? `since ${fmtTime(since)}` : ''}${a.state ? ` · ${esc(a.state)}` : ''}</div></div></div>`;
  }).join('') : '<p class="muted">No alert is firing.</p>';
}

// ---------------------------------------------------------------------------------------------
// Routing

function parseHash() {
  const hash = location.hash.replace(/^#\/?/, '');
  const [path, query] = hash.split('?');
  return { parts: path.split('/').filter(Boolean), params: new URLSearchParams(query ?? '') };
}

function route() {
  if (!state.token) return;
  const { parts, params } = parseHash();
  let view = parts[0] || 'jobs';
  if (!['jobs', 'job', 'start', 'models', 'health'].includes(view) || (view === 'job' && !parts[1])) view = 'jobs';
  if (state.view === 'job' && view !== 'job') leaveJobPage();
  state.view = view;
  for (const section of document.querySelectorAll('.view')) section.hidden = section.id !== `view-${view}`;
  for (const link of document.querySelectorAll('#nav a')) {
    link.classList.toggle('active', link.dataset.view === view || (view === 'job' && link.dataset.view === 'jobs'));
  }
  switch (view) {
    case 'jobs': renderJobsTable(); break;
    case 'job': showJob(decodeURIComponent(parts[1]), (params.get('with') ?? '').split(',').filter(Boolean)); break;
    case 'start': if (!$('#start-fields').children.length || !$('#field-steps')) renderStartForm(); break;
    case 'models': renderModelsTable(); loadModels(); break;
    case 'health': renderHealth(); loadHealth(); break;
    default: break;
  }
}

// ---------------------------------------------------------------------------------------------
// Sign-in and boot

const timers = [];

function showLogin(message) {
  $('#app').hidden = true;
  $('#login').hidden = false;
  const error = $('#login-error');
  error.textContent = message ?? '';
  error.hidden = !message;
  $('#token-input').focus();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  live.stop();
  leaveJobPage();
  state.view = null;
  while (timers.length) clearInterval(timers.pop());
  showLogin(message);
}

async function signIn(token) {
  state.token = token;
  try {
    // Reading the OpenAPI document needs a token: it checks the token and gives the start form.
    state.openapi = await api('/openapi.json', { signOutOn401: false });
  } catch (error) {
    state.token = null;
    if (error.status === 401) return showLogin(UNAUTHORIZED);
    if (error.status === 403) return showLogin(`This token may not read the API (403 Forbidden): ${error.message}`);
    return showLogin(`Cannot sign in: ${error.message}`);
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $('#login').hidden = true;
  $('#app').hidden = false;
  $('#token-input').value = '';
  live.start();
  live.subscribe('training_updates', onTrainingUpdate);
  live.subscribe('model_updates', () => {
    state.modelsStale = true;
    if (state.view === 'models') loadModels();
    for (const job of tracked.values()) if (job.record?.status === 'completed') loadJobModels(job);
  });
  live.subscribe('health', () => { if (state.view === 'health') loadHealth(); });
  api('/phases').then((phases) => {
    state.phases = phases;
    renderPhaseSelect();
  }).catch(() => {});
  timers.push(setInterval(() => { if (!document.hidden) loadJobs(); }, JOB_POLL_MS));
  timers.push(setInterval(() => { if (!document.hidden) loadHealth(); }, HEALTH_POLL_MS));
  renderStartForm();
  loadJobs();
  loadHealth();
  route();
  return undefined;
}

function bindEvents() {
  $('#login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const token = $('#token-input').value.trim();
    if (!token) return showLogin('Enter a token.');
    $('#login-error').hidden = true;
    return signIn(token);
  });
  $('#sign-out').addEventListener('click', () => signOut());
  window.addEventListener('hashchange', route);

  const jobsFilters = ['#jobs-filter-status', '#jobs-filter-phase', '#jobs-filter-text'];
  for (const selector of jobsFilters) $(selector).addEventListener('input', renderJobsTable);
  $('#jobs-filter-status').innerHTML += JOB_STATUSES.map((s) => `<option value="${s}">${s}</option>`).join('');
  $('#jobs-body').addEventListener('click', (event) => {
    const target = event.target.closest('[data-action]');
    if (!target) return;
    const id = target.dataset.jobId;
    if (target.dataset.action === 'cancel') cancelJob(id);
    if (target.dataset.action === 'select') {
      if (target.checked) state.selectedJobs.add(id); else state.selectedJobs.delete(id);
      $('#jobs-compare').disabled = state.selectedJobs.size < 1;
    }
  });
  $('#jobs-compare').addEventListener('click', () => {
    const ids = sortedJobs().map((j) => j.id).filter((id) => state.selectedJobs.has(id));
    if (ids.length) location.hash = jobHash(ids[0], ids.slice(1));
  });

  $('#job-cancel').addEventListener('click', () => cancelJob(jobPage.id));
  $('#smoothing').addEventListener('input', () => {
    $('#smoothing-value').textContent = Number($('#smoothing').value).toFixed(2);
    scheduleChart();
  });
  for (const selector of ['#loss-log', '#show-secondary']) $(selector).addEventListener('change', renderCharts);
  $('#compare-add').addEventListener('click', () => {
    const id = $('#compare-select').value;
    if (id) location.hash = jobHash(jobPage.id, [...jobPage.compare, id]);
  });
  $('#compare-chips').addEventListener('click', (event) => {
    const target = event.target.closest('[data-action=uncompare]');
    if (target) location.hash = jobHash(jobPage.id, jobPage.compare.filter((id) => id !== target.dataset.jobId));
  });

  $('#start-form').addEventListener('submit', submitStart);
  $('#start-form').addEventListener('input', markChangedFields);
  $('#start-reset').addEventListener('click', () => { renderStartForm(); clearStartErrors(); });

  const modelFilters = ['#models-filter-phase', '#models-filter-winner', '#models-filter-text'];
  for (const selector of modelFilters) $(selector).addEventListener('input', renderModelsTable);
  $('#models-body').addEventListener('click', (event) => {
    const target = event.target.closest('[data-action]');
    if (!target) return;
    const id = target.dataset.modelId;
    switch (target.dataset.action) {
      case 'export-model': exportModels([id]); break;
      case 'toggle-model':
        event.preventDefault();
        state.openModel = state.openModel === id ? null : id;
        renderModelsTable();
        break;
      case 'select-model':
        if (target.checked) state.selectedModels.add(id); else state.selectedModels.delete(id);
        $('#export-selected').disabled = state.selectedModels.size === 0;
        break;
      default: break;
    }
  });
  $('#export-selected').addEventListener('click', () => exportModels(Array.from(state.selectedModels)));
  $('#health-refresh').addEventListener('click', loadHealth);

  let resizeTimer = null;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      for (const [kind, chart] of Object.entries(jobPage.charts)) {
        if (!chart) continue;
        const container = $(kind === 'loss' ? '#chart-loss' : '#chart-acc');
        chart.setSize({ width: Math.max(300, container.clientWidth), height: 300 });
      }
      scheduleChart();
    }, 150);
  });
  document.addEventListener('visibilitychange', () => { if (!document.hidden && state.view === 'job') scheduleChart(); });
}

// For tests and the curious: the page's state and its pure helpers.
window.grokforge = {
  state, tracked, live, SeriesStore, alignCurves, smooth, renderCharts, renderJobsTable, MAX_POINTS_PER_SERIES,
};

bindEvents();
const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) signIn(saved); else showLogin();
