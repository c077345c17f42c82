"""Model packages as a device reads them: the format and its errors (`format`), reading,
verifying and extracting (`read`), and golden-sample checks at install (`golden`).

The agent imports these and never `edgefleet.shared.modeltools`, the workstation tooling
that builds packages (`edgefleet.shared.modeltools.builder`).
"""
