-- 0001_initial: the audit history of auto-disable and the current set of disabled pairs.
--
-- Applied by `cliproxy.store.apply_migrations` (at start-up and by `cliproxy migrate`) in one
-- transaction together with its row in `schema_migrations`; never edit a migration that has been
-- released: add a new NNNN_name.sql file instead.
--
-- Conventions
--   * Every timestamp is ISO-8601 UTC text with milliseconds, e.g. 2026-11-21T23:59:01.123Z.
--     It is readable as it is in the sqlite3 shell, sorts correctly as text, and SQLite's date
--     functions understand it: julianday(at), and `at >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 day')`
--     selects the last 24 hours. The server holds epoch seconds and rounds them to the
--     millisecond when it stores them.
--   * A (vendor, model) pair is the vendor's name and the model's upstream name as configured.
--   * Nothing secret is stored: error excerpts are masked before they get here.
--
-- Table schema_migrations (created by the migration runner, not by this file)
--   version     the NNNN prefix of the migration file, as an integer
--   name        the file name, e.g. 0001_initial.sql
--   applied_at  when it was applied
--
-- Table events: the append-only history, one row per thing that happened. UPDATE and DELETE are
-- refused by triggers.
--   id                increasing with insertion; newest first = ORDER BY id DESC
--   at                when it happened
--   kind              disabled (auto-disable tripped) | enabled | manual-disable | manual-enable |
--                     vendor-changed | model-changed | config-reloaded | config-rejected
--   vendor, model     the pair concerned (NULL for config events; model NULL for vendor events)
--   reason            auto | manual: which kind of disable a disable or enable concerns
--   cause             why an `enabled` happened: expired | manual | startup-expired
--   disabled_at       when the pair was disabled (on disable and enable events)
--   disabled_until    when the disable ends; NULL for a manual disable without an end
--   failure_count     failures counted in the window when the disable tripped
--   window_started_at start of that failure window
--   threshold         the settings in force for the pair at that moment: failure_threshold,
--   window_seconds      time_window_seconds and disable_duration_seconds (copies of the
--   duration_seconds    keys of `settings`, for querying)
--   settings          all the settings in force, JSON text (the source of the three columns above)
--   last_status       the upstream HTTP status of the last error; NULL for transport errors
--   last_error        a short, masked excerpt of the last error
--   actor             the management client's address, for manual actions
--   detail            anything else, JSON text
--
-- Table disabled_pairs: the pairs disabled now, one row per (vendor, model, reason); an auto and
-- a manual disable of one pair may coexist. Rows are inserted/replaced when a pair is disabled
-- and deleted when it is enabled, in the same transaction as the matching event. An expired
-- auto row may linger while the server is stopped; the server drops it at start-up with an
-- `enabled` event of cause startup-expired.
--   vendor, model     the pair
--   reason            auto | manual
--   disabled_at       when it was disabled
--   disabled_until    when it comes back; NULL for a manual disable without an end
--   failure_count     failures counted when an auto-disable tripped (0 for manual)
--   window_started_at start of that failure window
--   last_status       the upstream HTTP status of the last error; NULL for transport errors
--   last_error        a short, masked excerpt of the last error
--   actor             the management client's address, for manual disables
--   event_id          the events.id of the event that wrote this row

CREATE TABLE events (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    at                TEXT    NOT NULL
        CHECK (at GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9].[0-9][0-9][0-9]Z'),
    kind              TEXT    NOT NULL,
    vendor            TEXT,
    model             TEXT,
    reason            TEXT,
    cause             TEXT,
    disabled_at       TEXT
        CHECK (disabled_at IS NULL OR disabled_at GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9].[0-9][0-9][0-9]Z'),
    disabled_until    TEXT
        CHECK (disabled_until IS NULL OR disabled_until GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9].[0-9][0-9][0-9]Z'),
    failure_count     INTEGER,
    window_started_at TEXT
        CHECK (window_started_at IS NULL OR window_started_at GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9].[0-9][0-9][0-9]Z'),
    threshold         INTEGER,
    window_seconds    REAL,
    duration_seconds  REAL,
    settings          TEXT,
    last_status       INTEGER,
    last_error        TEXT,
    actor             TEXT,
    detail            TEXT
);

CREATE INDEX events_pair_at ON events (vendor, model, at);
CREATE INDEX events_kind_at ON events (kind, at);
CREATE INDEX events_at ON events (at);

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events is append-only: UPDATE is not allowed');
END;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events is append-only: DELETE is not allowed');
END;

CREATE TABLE disabled_pairs (
    vendor            TEXT    NOT NULL,
    model             TEXT    NOT NULL,
    reason            TEXT    NOT NULL CHECK (reason IN ('auto', 'manual')),
    disabled_at       TEXT    NOT NULL
        CHECK (disabled_at GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9].[0-9][0-9][0-9]Z'),
    disabled_until    TEXT
        CHECK (disabled_until IS NULL OR disabled_until GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9].[0-9][0-9][0-9]Z'),
    failure_count     INTEGER NOT NULL DEFAULT 0,
    window_started_at TEXT
        CHECK (window_started_at IS NULL OR window_started_at GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9].[0-9][0-9][0-9]Z'),
    last_status       INTEGER,
    last_error        TEXT,
    actor             TEXT,
    event_id          INTEGER REFERENCES events (id),
    PRIMARY KEY (vendor, model, reason)
);
