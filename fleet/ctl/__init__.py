"""``edgefleet ctl``: the operator's command line over the fleet's REST API.

Layers, each one concept: `config` (where the fleet is and who we are), `client` (typed
HTTP calls; every failure becomes one `errors.CtlError`), `views` (the parts of the API's
answers the command line reads), `output` (tables for people, JSON for scripts),
`progress` (a rollout's progress as text: a pure function of its REST representation),
`watch` (the polling loop) and `cli` (argparse and the exit codes). Nothing here imports
the fleet's server code: the command line knows the fleet only through its HTTP API.
"""
