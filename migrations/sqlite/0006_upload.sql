-- XEP-0363 upload slots. The file of an uploaded slot is stored once per
-- content (files/<sha256>); many slots may share it.
CREATE TABLE upload_slots (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    filename TEXT NOT NULL,
    size BIGINT NOT NULL,
    content_type TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX upload_slots_owner ON upload_slots (owner);
CREATE INDEX upload_slots_sha ON upload_slots (sha256);
CREATE INDEX upload_slots_created ON upload_slots (created_at);
