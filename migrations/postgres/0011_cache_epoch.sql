-- The admin CLI (another process) bumps `epoch` when it changes accounts;
-- the running server polls it, drops what it caches about accounts
-- (credentials, rosters, offline hints), then records the epoch it has
-- applied in `seen`. `seen_at` (unix seconds) is the server's heartbeat: the
-- CLI waits for `seen` only while a server is alive.
CREATE TABLE cache_epoch (
    id INTEGER PRIMARY KEY,
    epoch BIGINT NOT NULL,
    seen BIGINT NOT NULL,
    seen_at BIGINT NOT NULL
);
INSERT INTO cache_epoch (id, epoch, seen, seen_at) VALUES (1, 0, 0, 0);
