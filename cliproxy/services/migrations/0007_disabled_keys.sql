-- 0007_disabled_keys: a vendor's API keys out of its rotation (issue 14, key scope).
--
-- Table disabled_keys: one row per key out now, written in the transaction of its `key-disabled`
-- event and deleted in that of its `key-enabled` event (kill -9 safe: a restart restores the row
-- with its original timestamps, or records `key-enabled` cause startup-expired when its time passed).
--   vendor          the vendor
--   key_index       the key's position in the vendor's `api-key-entries` (0-based)
--   key_hash        16 hex digits of the SHA-256 of the key's value (the value is never stored): a
--                   row whose hash no longer matches the key at its index (replaced, or the list
--                   reordered) is dropped at start-up or reload (`key-enabled`, cause key-changed)
--   disabled_at, disabled_until   as in disabled_pairs
--   disable_level   its backoff level (1 for the first disable in a row)
--   last_status, last_error, last_error_kind   the refusal (already masked)
--   event_id        the events.id of the `key-disabled` event that wrote this row
--
-- New values in `events` (the columns are unchanged; the key is named in `detail`):
--   kind   key-disabled: reason `key` (the vendor has other keys) or `credentials` (it was the last:
--          every pair of the vendor is unavailable; detail.models lists them); detail
--          {"key_index", "key_hash", "disable_level", "keys_available"}
--          key-enabled: cause expired | manual | startup-expired | key-changed; detail {"key_index", "key_hash"}
--
-- Same timestamp convention as 0001 (ISO-8601 UTC text with milliseconds).

CREATE TABLE disabled_keys (
    vendor          TEXT    NOT NULL,
    key_index       INTEGER NOT NULL CHECK (key_index >= 0),
    key_hash        TEXT    NOT NULL,
    disabled_at     TEXT    NOT NULL
        CHECK (disabled_at GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9].[0-9][0-9][0-9]Z'),
    disabled_until  TEXT    NOT NULL
        CHECK (disabled_until GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9].[0-9][0-9][0-9]Z'),
    disable_level   INTEGER NOT NULL DEFAULT 1 CHECK (disable_level >= 1),
    last_status     INTEGER,
    last_error      TEXT,
    last_error_kind TEXT,
    event_id        INTEGER REFERENCES events (id),
    PRIMARY KEY (vendor, key_index)
);
