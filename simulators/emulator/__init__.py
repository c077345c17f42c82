"""A protocol-level device emulator: thousands of MQTT devices from a few processes."""
