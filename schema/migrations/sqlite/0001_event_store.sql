-- Charter's event store on SQLite (the embedded default).
--
-- SQLite runs one write transaction at a time, so positions handed out by
-- AUTOINCREMENT inside a write transaction commit in position order.
CREATE TABLE events (
    position        INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id       TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    aggregate_type  TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    recorded_at     TEXT    NOT NULL,
    org             TEXT    NOT NULL,
    actor           TEXT    NOT NULL,
    command_id      TEXT    NOT NULL,
    command_seq     INTEGER NOT NULL,
    correlation_id  TEXT    NOT NULL,
    causation_id    TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    CONSTRAINT events_stream_version UNIQUE (stream_id, version)
);

CREATE UNIQUE INDEX events_command ON events (command_id) WHERE command_seq = 0;

CREATE TABLE snapshots (
    stream_id       TEXT    NOT NULL PRIMARY KEY,
    aggregate_type  TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    state           TEXT    NOT NULL,
    taken_at        TEXT    NOT NULL
);

CREATE TABLE checkpoints (
    name        TEXT    NOT NULL PRIMARY KEY,
    position    INTEGER NOT NULL,
    updated_at  TEXT    NOT NULL
);
