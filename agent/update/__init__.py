"""Model updates on the device: a pure state machine (`machine`) and its I/O shell (`runner`)."""
