-- XEP-0313 message archive: one row per message per account that keeps it
-- (the sender's and the recipient's archives each get a row).
CREATE TABLE archive (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner TEXT NOT NULL,
    stanza_id TEXT NOT NULL,
    with_jid TEXT NOT NULL,
    stanza TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX archive_owner_sid ON archive (owner, stanza_id);
CREATE INDEX archive_owner_id ON archive (owner, id);
CREATE INDEX archive_owner_with ON archive (owner, with_jid, id);
CREATE INDEX archive_created ON archive (created_at);

-- Archiving preferences (XEP-0313 §6): default always|never|roster plus lists.
CREATE TABLE archive_prefs (
    owner TEXT PRIMARY KEY,
    default_mode TEXT NOT NULL,
    always_jids TEXT NOT NULL,
    never_jids TEXT NOT NULL
);
