"""Alert webhooks: where they may point, how deliveries are signed, how they are sent.

- `policy` (pure) decides whether a URL and each address it resolves to may receive
  alerts: http(s) only, and no loopback, private, link-local (cloud metadata),
  unique-local, multicast, unspecified or otherwise non-global address unless the
  operator allowed its network (``webhook_allowed_networks``), and only the hosts of
  ``webhook_allowed_hosts`` when that list is set.
- `resolver` is the one place names become addresses; delivery connects to the address
  it checked, so a DNS answer that changes between check and connect (rebinding) cannot
  redirect a POST.
- `signing` (pure) signs each body with the webhook's secret (HMAC-SHA256 over the
  timestamp and the body) and verifies such a signature, for receivers.
- `dispatcher` runs deliveries off the drift thread: one lane (bounded queue and
  thread) per webhook, retries with backoff, every attempt logged in
  ``drift_webhook_delivery``, pending rows sent again after a restart.
"""
