"""What the agent and the fleet must agree on: topics, messages, manifests, signing.

Invariant: nothing in this package imports `agent` or `fleet`.
"""

__version__ = "0.1.0"
