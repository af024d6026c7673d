-- Read models: documents that projectors build from the event log (see the
-- PostgreSQL migration of the same number for the design).
CREATE TABLE projections (
    name              TEXT    NOT NULL PRIMARY KEY,
    active_generation INTEGER NOT NULL,
    updated_at        TEXT    NOT NULL
);

CREATE TABLE projection_checkpoints (
    name        TEXT    NOT NULL,
    generation  INTEGER NOT NULL,
    position    INTEGER NOT NULL,
    updated_at  TEXT    NOT NULL,
    PRIMARY KEY (name, generation)
);

CREATE TABLE read_models (
    projection  TEXT    NOT NULL,
    generation  INTEGER NOT NULL,
    collection  TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    org         TEXT    NOT NULL,
    doc         TEXT    NOT NULL,
    position    INTEGER NOT NULL,
    PRIMARY KEY (projection, generation, collection, key)
);

CREATE INDEX read_models_by_org ON read_models (projection, generation, collection, org, key);
