-- XEP-0191 blocking: JIDs (bare, full or domain) an account blocks.
CREATE TABLE blocklist (
    owner TEXT NOT NULL,
    jid TEXT NOT NULL,
    PRIMARY KEY (owner, jid)
);
