-- XEP-0160 offline messages, delivered in id order.
CREATE TABLE offline_messages (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner TEXT NOT NULL,
    stanza TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX offline_messages_owner ON offline_messages (owner, id);
CREATE INDEX offline_messages_created ON offline_messages (created_at);

-- XEP-0012 last activity: when the last resource went offline, and its status.
CREATE TABLE last_activity (
    owner TEXT PRIMARY KEY,
    seen_at BIGINT NOT NULL,
    status TEXT NOT NULL
);
