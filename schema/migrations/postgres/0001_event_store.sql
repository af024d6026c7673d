-- Charter's event store on PostgreSQL.
--
-- `position` is assigned inside the appending transaction as
-- (transaction id << 20) + index of the event in the transaction, so the
-- log order is fixed when a row is written and readers can tell, from the
-- oldest still-running transaction id, which prefix of the log is final.
-- See commands/src/postgres.rs for why this gives commit-safe reads.
CREATE TABLE events (
    position        bigint      NOT NULL PRIMARY KEY,
    stream_id       text        NOT NULL,
    version         bigint      NOT NULL,
    aggregate_type  text        NOT NULL,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    org             text        NOT NULL,
    actor           text        NOT NULL,
    command_id      uuid        NOT NULL,
    command_seq     integer     NOT NULL,
    correlation_id  uuid        NOT NULL,
    causation_id    uuid        NOT NULL,
    -- `json`, not `jsonb`: the log is written once and read in order, and
    -- json keeps the text as written (no re-encoding on every read). Read
    -- models that query inside documents use jsonb.
    payload         json        NOT NULL,
    CONSTRAINT events_stream_version UNIQUE (stream_id, version)
);

-- One row per append (its first event) makes a repeated command id visible.
CREATE UNIQUE INDEX events_command ON events (command_id) WHERE command_seq = 0;

CREATE TABLE snapshots (
    stream_id       text        NOT NULL PRIMARY KEY,
    aggregate_type  text        NOT NULL,
    version         bigint      NOT NULL,
    state           jsonb       NOT NULL,
    taken_at        timestamptz NOT NULL
);

CREATE TABLE checkpoints (
    name        text        NOT NULL PRIMARY KEY,
    position    bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
