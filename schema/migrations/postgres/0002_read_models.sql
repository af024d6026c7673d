-- Read models: documents that projectors build from the event log.
--
-- A projection has generations: the active one serves queries while a
-- rebuild fills the next from the start of the log; activating the new
-- generation is one row update. Each generation's checkpoint commits in the
-- same transaction as the documents it produced.
CREATE TABLE projections (
    name              text        NOT NULL PRIMARY KEY,
    active_generation integer     NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE projection_checkpoints (
    name        text        NOT NULL,
    generation  integer     NOT NULL,
    position    bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, generation)
);

CREATE TABLE read_models (
    projection  text    NOT NULL,
    generation  integer NOT NULL,
    collection  text    NOT NULL,
    key         text    NOT NULL,
    org         text    NOT NULL,
    doc         jsonb   NOT NULL,
    position    bigint  NOT NULL,
    PRIMARY KEY (projection, generation, collection, key)
);

-- Every query is scoped to an org.
CREATE INDEX read_models_by_org ON read_models (projection, generation, collection, org, key);
