"""The fleet's Prometheus metrics (`metrics`) and the HTTP middleware that records the
repository's traffic (`repository_traffic`)."""
