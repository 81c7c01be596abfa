-- Accounts keep SCRAM keys only (RFC 5802), never the password.
CREATE TABLE accounts (
    jid TEXT PRIMARY KEY,
    domain TEXT NOT NULL,
    sha1_salt BLOB NOT NULL,
    sha1_iterations BIGINT NOT NULL,
    sha1_stored_key BLOB NOT NULL,
    sha1_server_key BLOB NOT NULL,
    sha256_salt BLOB NOT NULL,
    sha256_iterations BIGINT NOT NULL,
    sha256_stored_key BLOB NOT NULL,
    sha256_server_key BLOB NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX accounts_domain ON accounts (domain);

-- RFC 6121 roster with the full subscription state (Appendix A).
CREATE TABLE roster_items (
    owner TEXT NOT NULL,
    contact TEXT NOT NULL,
    name TEXT,
    subscription TEXT NOT NULL,
    ask_out BOOLEAN NOT NULL,
    pending_in BOOLEAN NOT NULL,
    pending_in_status TEXT,
    approved BOOLEAN NOT NULL,
    in_roster BOOLEAN NOT NULL,
    groups TEXT NOT NULL,
    PRIMARY KEY (owner, contact)
);

-- XEP-0237 roster versioning: one counter per account.
CREATE TABLE roster_versions (
    owner TEXT PRIMARY KEY,
    version BIGINT NOT NULL
);

-- XEP-0054 vcard-temp, stored as serialized XML.
CREATE TABLE vcards (
    owner TEXT PRIMARY KEY,
    xml TEXT NOT NULL
);
