-- XEP-0357 push registrations: an account's devices and their app servers.
CREATE TABLE push_registrations (
    owner TEXT NOT NULL,
    service TEXT NOT NULL,
    node TEXT NOT NULL,
    options TEXT NOT NULL,
    PRIMARY KEY (owner, service, node)
);
