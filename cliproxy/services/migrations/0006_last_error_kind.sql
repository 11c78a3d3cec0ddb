-- 0006_last_error_kind: what kind of failure the last error was (issue 14, classification).
--
--   events.last_error_kind          on events that carry a last error (`disabled`, `would-disable`,
--   disabled_pairs.last_error_kind  `rate-limited`, ...) and on the current-state rows: http_status |
--                                   connect | timeout | first_token_timeout | stream_idle |
--                                   stream_error | error_in_200 | empty_stream | model_not_found
--                                   (cliproxy.core.classify.ErrorKind). NULL on rows written before
--                                   this migration and where no kind is known.
--
-- Plain ADD COLUMNs: no CHECK constraint, so a later kind needs no table rebuild.

ALTER TABLE events ADD COLUMN last_error_kind TEXT;

ALTER TABLE disabled_pairs ADD COLUMN last_error_kind TEXT;
