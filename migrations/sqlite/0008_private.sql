-- XEP-0049 private XML storage: one element per namespace per account.
CREATE TABLE private_xml (
    owner TEXT NOT NULL,
    namespace TEXT NOT NULL,
    xml TEXT NOT NULL,
    PRIMARY KEY (owner, namespace)
);
