-- ImgSmaller schema, version 8. `flask --app app init-db` applies it; every statement
-- is idempotent so running it again never destroys data. Later versions add
-- migrations in imgsmaller/db.py keyed on PRAGMA user_version.

CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT,               -- Werkzeug scrypt hash; NULL: API-only account
    allowed_domain TEXT,              -- normalised host, or NULL
    daily_limit INTEGER,              -- NULL: the server's DAILY_LIMIT
    key_hash TEXT UNIQUE,             -- SHA-256 hex of the API key; the key itself is never stored
    key_prefix TEXT,                  -- first characters of the key, to recognise it in the dashboard
    key_created_at TEXT,
    session_version INTEGER NOT NULL DEFAULT 0,  -- bumped at log-out: every session cookie of the account ends
    webhook_secret TEXT,              -- signs callback_url deliveries (webhooks.py); kept as is, since the server signs with it
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS users_email_lower ON users (lower(email));

-- Accepted compress requests per account per UTC day (YYYY-MM-DD).
CREATE TABLE IF NOT EXISTS usage (
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    day TEXT NOT NULL,
    count INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, day)
) WITHOUT ROWID;

-- One row per compress request; jobs.id is the public image_id.
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER REFERENCES users(id) ON DELETE SET NULL,
    progress_key TEXT NOT NULL UNIQUE,
    download_token TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'done', 'failed')),
    target_size INTEGER,              -- bytes; NULL: auto
    output TEXT NOT NULL,             -- requested: jpeg, png, webp, avif or original
    filename TEXT,                    -- sanitised client file name stem, only for the download name
    original_format TEXT,
    original_bytes INTEGER,
    original_width INTEGER,
    original_height INTEGER,
    format TEXT,
    bytes INTEGER,
    width INTEGER,
    height INTEGER,
    quality_score REAL,
    encodes INTEGER,
    warnings TEXT,                    -- done: JSON list of the result's warnings (sentences); NULL: none recorded
    message TEXT,                     -- public failure message
    claimed_by TEXT,                  -- workers.id of the process running it
    attempts INTEGER NOT NULL DEFAULT 0,  -- runs started (a run released at shutdown is not counted)
    lease_expires_at TEXT,            -- running: the claim holds until then (database clock); renewed by its worker
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    expires_at TEXT NOT NULL,
    files_deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE INDEX IF NOT EXISTS jobs_user_created ON jobs(user_id, created_at);
CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs(files_deleted, expires_at);

-- Processes running jobs, for operators: which hosts run jobs and when each was last heard from.
-- Recovery does not rely on it (leases do); rows of processes silent for long are deleted.
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    pid INTEGER NOT NULL,
    heartbeat_at TEXT NOT NULL
);

-- Throttled events (failed log-ins, sign-ups), one row each, shared by every process;
-- imgsmaller/throttle.py owns this table. Rows are deleted once expired.
CREATE TABLE IF NOT EXISTS throttle_events (
    id INTEGER PRIMARY KEY,
    bucket TEXT NOT NULL,             -- what is counted, e.g. "login-address:203.0.113.5"
    at REAL NOT NULL,                 -- Unix time of the event
    expires_at REAL NOT NULL          -- at + the bucket's window
);
CREATE INDEX IF NOT EXISTS throttle_events_bucket ON throttle_events(bucket, expires_at);
CREATE INDEX IF NOT EXISTS throttle_events_expiry ON throttle_events(expires_at);

-- Idempotency-Key of compress requests, one row per account and key for 24 hours;
-- imgsmaller/idempotency.py owns this table. Rows are deleted once expired.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    key_hash TEXT NOT NULL,           -- SHA-256 hex of the Idempotency-Key header
    fingerprint TEXT NOT NULL,        -- SHA-256 hex of what the request asked for (idempotency.fingerprint_of)
    job_id INTEGER REFERENCES jobs(id) ON DELETE CASCADE,  -- the job the key answers with
    warnings TEXT,                    -- JSON list of the first 202's warnings; NULL: none
    created_at TEXT NOT NULL,
    PRIMARY KEY (user_id, key_hash)   -- racing duplicates: one row, so one job
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys(created_at);

-- One row per compress request with a callback_url; imgsmaller/webhooks.py owns this table.
-- Created with the job ('waiting'), 'pending' once the job ended (its body fixed), then
-- 'delivered' (a 2xx answer) or 'failed' (no 2xx after the last attempt).
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL UNIQUE REFERENCES jobs(id) ON DELETE CASCADE,
    user_id INTEGER REFERENCES users(id) ON DELETE CASCADE,
    url TEXT NOT NULL,                -- the callback_url, checked when the request was accepted and at every attempt
    base_url TEXT NOT NULL,           -- the links in the body start with this (PUBLIC_URL or the request's host)
    status TEXT NOT NULL DEFAULT 'waiting'
        CHECK (status IN ('waiting', 'pending', 'delivered', 'failed')),
    body TEXT,                        -- the JSON sent, fixed when the job ended
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,  -- pending: the next attempt (or a claim's end); waiting: the next look at the job
    last_attempt_at TEXT,
    response_code INTEGER,               -- of the last attempt; NULL: no HTTP answer
    error TEXT,                       -- why the last attempt failed, for the Dashboard
    created_at TEXT NOT NULL,
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries(status, next_attempt_at);
CREATE INDEX IF NOT EXISTS webhook_deliveries_user ON webhook_deliveries(user_id, id);
