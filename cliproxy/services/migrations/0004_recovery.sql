-- 0004_recovery: backoff levels and half-open / probe recovery (issue 13, part B).
--
-- Half-open and probing are not stored as states of their own: a pair under `recovery: half-open`
-- or `recovery: probe` keeps its `disabled_pairs` auto row (with its original timestamps) after
-- `disabled_until` has passed, until a half-open request or the probe decides; a restart finds the
-- row and the setting and puts the pair back where it was.
--
--   disabled_pairs.disable_level  the backoff level of an auto-disable: 1 for the first disable in
--                                 a row, k for the k-th; 0 when no level is kept (the spec's
--                                 defaults: `backoff-multiplier: 1`, `recovery: timer`) and on
--                                 rows written before 0004
--
-- Table backoff_levels: the backoff level of a pair back in service, one row per pair, written in
-- the transaction of the `enabled` event that ended its disable. The level drops by one for every
-- `disable-duration-seconds` served since `level_since` (computed, never rewritten); a row whose
-- level has decayed to 0 means nothing and may linger.
--   vendor, model   the pair
--   disable_level   the level of the disable that ended (>= 1)
--   level_since     when the pair went back into service at that level (the decay runs from here)
--   event_id        the events.id of the `enabled` event that wrote this row
--
-- New values in `events` (the columns are unchanged):
--   kind   probe-failed: the probe of a pair under `recovery: probe` failed (last_status,
--          last_error say how); a `disabled` event follows
--   cause  half-open-success | probe-success, on `enabled` events
--   detail {"disable_level": k, "trigger": "half-open" | "probe"} on `disabled` events when recovery
--          settings are in use
--
-- Same timestamp convention as 0001 (ISO-8601 UTC text with milliseconds).

ALTER TABLE disabled_pairs ADD COLUMN disable_level INTEGER NOT NULL DEFAULT 0 CHECK (disable_level >= 0);

CREATE TABLE backoff_levels (
    vendor        TEXT    NOT NULL,
    model         TEXT    NOT NULL,
    disable_level INTEGER NOT NULL CHECK (disable_level >= 1),
    level_since   TEXT    NOT NULL
        CHECK (level_since GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9].[0-9][0-9][0-9]Z'),
    event_id      INTEGER REFERENCES events (id),
    PRIMARY KEY (vendor, model)
);
