-- grokforge metadata, PostgreSQL flavour. Kept column-for-column in step with
-- ../sqlite/0001_registry_jobs_exports.sql: the Rust code runs the same statements on both.
-- Integers are BIGINT throughout so both backends decode them as i64.

-- Version counter per model name. Allocating the next version with
-- INSERT .. ON CONFLICT DO UPDATE .. RETURNING locks this row until the saving transaction
-- commits, so concurrent saves of one name get 1, 2, 3, … with no gaps and no duplicates.
CREATE TABLE model_names (
    name         TEXT PRIMARY KEY,
    last_version BIGINT NOT NULL CHECK (last_version >= 1)
);

CREATE TABLE models (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL,
    phase       TEXT NOT NULL,
    version     BIGINT NOT NULL CHECK (version >= 1),
    -- Lineage, in the order given. Not a foreign key: a parent may be deleted later and the
    -- child still records where it came from.
    parent_ids  JSONB NOT NULL DEFAULT '[]',
    -- The job that produced the model; jobs may be pruned, the lineage stays.
    job_id      UUID,
    format      TEXT NOT NULL,
    -- Primary file, relative to the artifacts directory (models/<id>/<file>).
    file_path   TEXT NOT NULL,
    size_bytes  BIGINT NOT NULL CHECK (size_bytes >= 0),
    sha256      TEXT NOT NULL,
    config      JSONB NOT NULL,
    metrics     JSONB NOT NULL,
    tags        JSONB NOT NULL DEFAULT '[]',
    winner      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  TIMESTAMPTZ NOT NULL,
    UNIQUE (name, version)
);
-- At most one winner per phase, whatever the application does.
CREATE UNIQUE INDEX models_one_winner_per_phase ON models (phase) WHERE winner;
CREATE INDEX models_by_phase ON models (phase, created_at);
CREATE INDEX models_by_job ON models (job_id);
CREATE INDEX models_by_tag ON models USING GIN (tags);

-- The manifest: every file of a model with its checksum; position 0 is the primary file.
CREATE TABLE model_files (
    model_id   UUID NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    position   BIGINT NOT NULL CHECK (position >= 0),
    file_name  TEXT NOT NULL,
    size_bytes BIGINT NOT NULL CHECK (size_bytes >= 0),
    sha256     TEXT NOT NULL,
    PRIMARY KEY (model_id, file_name),
    UNIQUE (model_id, position)
);

-- Models handed from one phase to the next (the next phase's inputs).
CREATE TABLE handoffs (
    id         UUID PRIMARY KEY,
    from_phase TEXT NOT NULL,
    to_phase   TEXT NOT NULL,
    model_ids  JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX handoffs_by_to_phase ON handoffs (to_phase, created_at);

-- Training jobs. The database is the source of truth for their state. A node claims with
--   SELECT id FROM jobs WHERE status = 'queued' ORDER BY priority DESC, created_at, id
--   LIMIT n FOR UPDATE SKIP LOCKED
-- (served by jobs_claimable) and reclaims expired leases through jobs_leases.
CREATE TABLE jobs (
    id                   UUID PRIMARY KEY,
    phase                TEXT NOT NULL,
    spec                 JSONB NOT NULL,
    status               TEXT NOT NULL CHECK (status IN
                             ('queued', 'running', 'completed', 'failed', 'cancelled', 'interrupted')),
    priority             BIGINT NOT NULL DEFAULT 0,
    attempts             BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts         BIGINT NOT NULL CHECK (max_attempts >= 1),
    owner_node           TEXT,
    lease_expires_at     TIMESTAMPTZ,
    cancel_requested     BOOLEAN NOT NULL DEFAULT FALSE,
    last_checkpoint_path TEXT,
    progress             JSONB,
    error                TEXT,
    attempt_errors       JSONB NOT NULL DEFAULT '[]',
    -- Last sequence number handed out in job_events; bumped under the row lock.
    last_event_seq       BIGINT NOT NULL DEFAULT 0,
    created_at           TIMESTAMPTZ NOT NULL,
    started_at           TIMESTAMPTZ,
    finished_at          TIMESTAMPTZ,
    updated_at           TIMESTAMPTZ NOT NULL
);
CREATE INDEX jobs_claimable ON jobs (priority DESC, created_at, id) WHERE status = 'queued';
CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE status = 'running';
CREATE INDEX jobs_by_created ON jobs (created_at);

-- The durable per-job event log, for WebSocket catch-up (`since=<seq>`).
CREATE TABLE job_events (
    job_id     UUID NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq        BIGINT NOT NULL CHECK (seq >= 1),
    envelope   JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (job_id, seq)
);

-- Export packages under <artifacts>/exports/.
CREATE TABLE exports (
    id         UUID PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL,
    -- Relative to the artifacts directory: exports/<id>.zip or exports/<id>.
    path       TEXT NOT NULL,
    model_ids  JSONB NOT NULL,
    format     TEXT NOT NULL,
    compressed BOOLEAN NOT NULL,
    size_bytes BIGINT NOT NULL CHECK (size_bytes >= 0)
);
CREATE INDEX exports_by_created ON exports (created_at);
