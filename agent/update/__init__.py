"""Model updates on the device.

- `acceptance`: whether a desired state is taken (pure: replay, expiry, redelivery, downgrade);
- `machine`: the update state machine (pure: state, event, now → state, effects);
- `runner`: its I/O shell, which persists each state, then performs the effects through
  the protocols in `ports`, implemented for real in `adapters`;
- `wiring`: `UpdateService`, which builds all of it for one agent.
"""
