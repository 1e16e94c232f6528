-- grokforge metadata, SQLite flavour. Kept column-for-column in step with
-- ../postgres/0001_registry_jobs_exports.sql: the Rust code runs the same statements on both.
-- Types are what sqlx encodes for SQLite: UUIDs as 16-byte BLOBs, timestamps as RFC 3339
-- TEXT, JSON as TEXT (checked), booleans as 0/1.

CREATE TABLE model_names (
    name         TEXT PRIMARY KEY,
    last_version INTEGER NOT NULL CHECK (last_version >= 1)
);

CREATE TABLE models (
    id          BLOB PRIMARY KEY,
    name        TEXT NOT NULL,
    phase       TEXT NOT NULL,
    version     INTEGER NOT NULL CHECK (version >= 1),
    parent_ids  TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(parent_ids)),
    job_id      BLOB,
    format      TEXT NOT NULL,
    file_path   TEXT NOT NULL,
    size_bytes  INTEGER NOT NULL CHECK (size_bytes >= 0),
    sha256      TEXT NOT NULL,
    config      TEXT NOT NULL CHECK (json_valid(config)),
    metrics     TEXT NOT NULL CHECK (json_valid(metrics)),
    tags        TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(tags)),
    winner      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  TEXT NOT NULL,
    UNIQUE (name, version)
);
CREATE UNIQUE INDEX models_one_winner_per_phase ON models (phase) WHERE winner;
CREATE INDEX models_by_phase ON models (phase, created_at);
CREATE INDEX models_by_job ON models (job_id);

CREATE TABLE model_files (
    model_id   BLOB NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    position   INTEGER NOT NULL CHECK (position >= 0),
    file_name  TEXT NOT NULL,
    size_bytes INTEGER NOT NULL CHECK (size_bytes >= 0),
    sha256     TEXT NOT NULL,
    PRIMARY KEY (model_id, file_name),
    UNIQUE (model_id, position)
);

CREATE TABLE handoffs (
    id         BLOB PRIMARY KEY,
    from_phase TEXT NOT NULL,
    to_phase   TEXT NOT NULL,
    model_ids  TEXT NOT NULL CHECK (json_valid(model_ids)),
    created_at TEXT NOT NULL
);
CREATE INDEX handoffs_by_to_phase ON handoffs (to_phase, created_at);

-- SQLite has one writer at a time, so claiming needs no SKIP LOCKED: a BEGIN IMMEDIATE
-- transaction is the one claimant.
CREATE TABLE jobs (
    id                   BLOB PRIMARY KEY,
    phase                TEXT NOT NULL,
    spec                 TEXT NOT NULL CHECK (json_valid(spec)),
    status               TEXT NOT NULL CHECK (status IN
                             ('queued', 'running', 'completed', 'failed', 'cancelled', 'interrupted')),
    priority             INTEGER NOT NULL DEFAULT 0,
    attempts             INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts         INTEGER NOT NULL CHECK (max_attempts >= 1),
    owner_node           TEXT,
    lease_expires_at     TEXT,
    cancel_requested     BOOLEAN NOT NULL DEFAULT FALSE,
    last_checkpoint_path TEXT,
    progress             TEXT CHECK (progress IS NULL OR json_valid(progress)),
    error                TEXT,
    attempt_errors       TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(attempt_errors)),
    last_event_seq       INTEGER NOT NULL DEFAULT 0,
    created_at           TEXT NOT NULL,
    started_at           TEXT,
    finished_at          TEXT,
    updated_at           TEXT NOT NULL
);
CREATE INDEX jobs_claimable ON jobs (priority DESC, created_at, id) WHERE status = 'queued';
CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE status = 'running';
CREATE INDEX jobs_by_created ON jobs (created_at);

CREATE TABLE job_events (
    job_id     BLOB NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL CHECK (seq >= 1),
    envelope   TEXT NOT NULL CHECK (json_valid(envelope)),
    created_at TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;

CREATE TABLE exports (
    id         BLOB PRIMARY KEY,
    created_at TEXT NOT NULL,
    path       TEXT NOT NULL,
    model_ids  TEXT NOT NULL CHECK (json_valid(model_ids)),
    format     TEXT NOT NULL,
    compressed BOOLEAN NOT NULL,
    size_bytes INTEGER NOT NULL CHECK (size_bytes >= 0)
);
CREATE INDEX exports_by_created ON exports (created_at);
