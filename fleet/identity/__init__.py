"""Device identity: the fleet's device CA, enrollment tokens and each device's certificate."""
