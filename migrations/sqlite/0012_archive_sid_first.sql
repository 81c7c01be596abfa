-- The per-account stanza-id index becomes (stanza_id, owner): the same
-- uniqueness and the same lookups by (owner, stanza_id), but our stanza ids
-- start with the time, so new rows are appended at the end of one index
-- instead of landing in a page of every account's range (one page written
-- per account per commit; BENCHMARKS.md, session 5).
CREATE UNIQUE INDEX archive_sid_owner ON archive (stanza_id, owner);
DROP INDEX archive_owner_sid;
