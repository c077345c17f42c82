"""Who may do what: permissions, roles, grants and the principal a request acts as.

`permissions` (the table and the built-in roles), `grants`, `principal` (a caller's
resolved grants and the checks on them) and `lifecycle` are pure logic; `oidc` turns a
verified JWT's claims into a principal, with `jwks` (the one module here doing I/O)
fetching the issuer's keys. Users, tokens and custom roles are
stored by `edgefleet.fleet.store.governance_tables` and resolved by
`edgefleet.fleet.api.auth`.
"""
