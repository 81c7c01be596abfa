-- A counter that processes other than the server (the admin CLI) bump when
-- they change accounts; the running server polls it and then drops what it
-- caches about accounts (credentials, rosters, offline hints).
CREATE TABLE cache_epoch (
    id INTEGER PRIMARY KEY,
    epoch BIGINT NOT NULL
);
INSERT INTO cache_epoch (id, epoch) VALUES (1, 0);
