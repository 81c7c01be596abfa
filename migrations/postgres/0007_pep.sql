-- XEP-0163 PEP nodes of accounts, and their items (newest has the highest id).
CREATE TABLE pep_nodes (
    owner TEXT NOT NULL,
    node TEXT NOT NULL,
    access_model TEXT NOT NULL,
    max_items BIGINT NOT NULL,
    whitelist TEXT NOT NULL,
    PRIMARY KEY (owner, node)
);
CREATE TABLE pep_items (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner TEXT NOT NULL,
    node TEXT NOT NULL,
    item_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    publisher TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX pep_items_key ON pep_items (owner, node, item_id);
CREATE INDEX pep_items_order ON pep_items (owner, node, id);
