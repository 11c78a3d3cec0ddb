-- 0003_rate_limited: the upstream's rate limit (a 429 or 503 with Retry-After, retry-after-ms or an
-- x-ratelimit-reset-* header) as a third kind of disable, beside auto and manual.
--
--   disabled_pairs.reason   auto | manual | rate-limited. A rate-limited row holds the deadline the
--                           upstream asked for (clamped to max-retry-after-seconds) in disabled_until,
--                           when it started in disabled_at (kept when a longer hint extends it), and
--                           the answer that set it in last_status / last_error; failure_count is 0.
--   events.kind             gains `rate-limited`: a rate limit started or extended (reason
--                           rate-limited, disabled_at / disabled_until as on the row, settings
--                           {honor_retry_after, max_retry_after_seconds}, detail {retry_after_seconds:
--                           the hint as sent, header: which header said it, clamped, extended}).
--                           Its end is an `enabled` event with reason rate-limited and cause
--                           expired | manual | startup-expired, as for the other reasons.
--
-- events.kind has no CHECK constraint, so only disabled_pairs changes. SQLite cannot alter a CHECK
-- constraint: the table is rebuilt with the wider one and its rows copied over, in this file's one
-- transaction (nothing references disabled_pairs, so dropping it is safe with foreign keys on).

CREATE TABLE disabled_pairs_0003 (
    vendor            TEXT    NOT NULL,
    model             TEXT    NOT NULL,
    reason            TEXT    NOT NULL CHECK (reason IN ('auto', 'manual', 'rate-limited')),
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
    last_failure_at   TEXT
        CHECK (last_failure_at IS NULL OR last_failure_at GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9].[0-9][0-9][0-9]Z'),
    PRIMARY KEY (vendor, model, reason)
);

INSERT INTO disabled_pairs_0003 (
    vendor, model, reason, disabled_at, disabled_until, failure_count, window_started_at,
    last_status, last_error, actor, event_id, last_failure_at
)
SELECT
    vendor, model, reason, disabled_at, disabled_until, failure_count, window_started_at,
    last_status, last_error, actor, event_id, last_failure_at
FROM disabled_pairs;

DROP TABLE disabled_pairs;

ALTER TABLE disabled_pairs_0003 RENAME TO disabled_pairs;
