"""The import framework both services share.

- `models`: the import record, alert outbox and importer state tables (mixins; each service
  declares its own tables in its own schema).
- `sources`: where files come from — a watched folder, a bucket, or a folder acting as a bucket.
- `runner`: one pass over candidate files, one file at a time, one transaction per file; its
  jobs in `readahead`, `claims`, `importing`, `grouped` and `records`.
- `locking`: the single-runner lock (a session-level advisory lock on a dedicated connection).
- `worker`: the background scheduler that ties source, lock and runner together.
- `alerts`: e-mail to on-call, throttled in the database, kept when SMTP is down.
- `api`, `cli`: `/api/imports…` and `flask imports run-once`.

A service supplies a `FileHandler` (`handler`: its mapping from a file to service-function calls).
"""
