-- Tokens that every node of a cluster accepts, kept as SHA-256 digests, never in plain text.
-- `generated-admin` is the admin token the first node generated when none was configured; its
-- plain text exists only in that node's data directory (`admin-token`, mode 0600).
CREATE TABLE cluster_tokens (
    name       TEXT PRIMARY KEY,
    sha256     TEXT NOT NULL CHECK (length(sha256) = 64),
    role       TEXT NOT NULL,
    created_by TEXT NOT NULL
);
