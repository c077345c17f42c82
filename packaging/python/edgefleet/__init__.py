"""edgefleet: put machine-learning models on fleets of edge devices and keep them healthy.

The one import root of the distribution. Its four subpackages live at the top of the
repository (`agent/`, `fleet/`, `shared/`, `simulators/`); this directory maps them into
the namespace with relative directory links, so the wheel, the sdist and an editable
install (a static ``.pth`` pointing here) all import them as ``edgefleet.<side>``:

- `edgefleet.shared`: what both sides agree on (wire protocol, manifests, signing,
  drift sketches, runtimes); imports neither side.
- `edgefleet.agent`: the device daemon; never imports `edgefleet.fleet`.
- `edgefleet.fleet`: the central service; never imports `edgefleet.agent`.
- `edgefleet.simulators`: simulated devices and fleets running the real agent.
"""

from edgefleet.shared import __version__

__all__ = ["__version__"]
