-- 0002_last_failure_at: when the last counted failure of a pair happened, on the `disabled` event and
-- on the current-state row of an auto-disable (the spec's "update the last failure timestamp").
--
--   events.last_failure_at          the pair's last counted failure when the event was recorded
--                                   (on `disabled` events; NULL on the others and on older rows)
--   disabled_pairs.last_failure_at  the last counted failure when the pair was auto-disabled
--                                   (NULL for manual disables and on rows written before 0002)
--
-- Same timestamp convention as 0001 (ISO-8601 UTC text with milliseconds).

ALTER TABLE events ADD COLUMN last_failure_at TEXT
    CHECK (last_failure_at IS NULL OR last_failure_at GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9].[0-9][0-9][0-9]Z');

ALTER TABLE disabled_pairs ADD COLUMN last_failure_at TEXT
    CHECK (last_failure_at IS NULL OR last_failure_at GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9].[0-9][0-9][0-9]Z');
