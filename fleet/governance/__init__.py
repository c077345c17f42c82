"""Who may do what: permissions, roles, grants and the principal a request acts as.

Pure logic, no I/O: `permissions` (the table and the built-in roles), `principal` (a
caller's resolved grants and the checks on them). Users, tokens and custom roles are
stored by `edgefleet.fleet.store.governance_tables` and resolved by
`edgefleet.fleet.api.auth`.
"""
