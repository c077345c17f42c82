"""Fleet-side drift and model-performance monitoring.

Devices send `edgefleet.shared.drift.WindowSketch` windows; the ingester stores them in
``drift_window``. This package rolls them up into any slice (model version, device,
tag, hardware, time range), judges them against the model version's reference profile
(`rollup`, `analysis`), turns verdicts into alerts with a cool-down (`alerts`, pure),
stores and delivers those alerts over MQTT and webhooks (`notify`), runs that on a
schedule (`monitor`); `store` holds its queries. The routes under ``/v1/drift`` are
`edgefleet.fleet.api.drift`.

Its tables live in `edgefleet.fleet.store.drift_tables`; importing that module registers
them on ``SQLModel.metadata`` (`edgefleet.fleet.store.create_all` imports every table
module).
"""
