-- Persistent MUC rooms (XEP-0045): configuration and subject as key/value text,
-- affiliations in their own table.
CREATE TABLE muc_rooms (
    jid TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    subject TEXT NOT NULL,
    subject_by TEXT NOT NULL
);
CREATE TABLE muc_affiliations (
    room TEXT NOT NULL,
    jid TEXT NOT NULL,
    affiliation TEXT NOT NULL,
    PRIMARY KEY (room, jid)
);
