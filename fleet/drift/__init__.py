"""Fleet-side drift and model-performance monitoring.

Devices send `edgefleet.shared.drift.WindowSketch` windows; the ingester stores them in
``drift_window``. This package rolls them up into any slice (model version, device,
tag, hardware, time range), judges them against the model version's reference profile
(`rollup`, `analysis`), turns verdicts into alerts with a cool-down (`alerts`, pure),
stores and delivers those alerts over MQTT and webhooks (`notify`), runs that on a
schedule (`monitor`) and serves it under ``/v1/drift`` (`api`).

Its tables live in `edgefleet.fleet.drift.store`; importing that module registers them on
``SQLModel.metadata``.
"""
