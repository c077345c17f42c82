"""The fleet database's Alembic migrations: ``env.py``, the template, ``versions/``.

Run them through `edgefleet.fleet.store.migrate` (``edgefleet fleet migrate``), which
hands env.py an open connection; there is no ``alembic.ini``. Every schema change gets
its own revision here, made with ``edgefleet fleet migrate revision -m "..."`` from the
changed models; the test suite fails while the models and the revisions disagree.
"""
