"""Staged rollouts: the database shell around the pure core (`edgefleet.fleet.rollouts`).

- `orchestrator`: the loop that holds the lease, runs `edgefleet.fleet.rollouts.policy.decide`
  once per tick per active rollout, stores the new state and only then carries out its
  actions through the director;
- `observe` (with `reads`, the per-tick queries): device observations and wave metrics
  read from the registry, events, telemetry and drift windows;
- `store`: rollout rows and their history, every write a compare-and-set;
- `lease`: the one orchestrator lease shared by all replicas;
- `views`: what the API shows of a stored rollout.

The tables are in `edgefleet.fleet.store.rollout_tables`.
"""
