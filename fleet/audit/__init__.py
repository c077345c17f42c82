"""The audit log: one hash-chained entry per change, in the change's own transaction.

`entry` (what an entry says), `chain` (canonical JSON and the hash chain, pure),
`log` (appending inside the caller's transaction).
"""
