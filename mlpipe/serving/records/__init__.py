"""The serving records: every request and every feedback label, in an append-only store.

SQLite by default (one file, one server and its workers); a `postgresql://` URL in
`serve.records` puts them in PostgreSQL, so that several server processes on several machines
write one record set. The server appends through `RecordStore` (a writer thread commits in
small batches, so a request never waits for the disk); triggers refuse UPDATE and DELETE in
both stores, so nothing recorded can be rewritten. `/metrics` and the A/B report read the same
store, so every worker process and every restart see one history. Each request record carries
its author (the team member whose model answered, else empty) and the server process
(host:pid) that answered it.

- `db`: the two stores behind one connection type, their tables and append-only triggers;
- `writer`: `RecordStore`, the server's side (requests, experiments, feedback, /metrics);
- `reads`: what the A/B report, the team report and `serve` read back.
"""
