"""Ingest side of the node: the DICOM SCP (C-ECHO, C-STORE), the spool and the
stability watcher.

Modules
-------
contexts
    The accepted storage SOP classes and transfer syntaxes (one place; the
    conformance statement is built from it).
status
    C-STORE statuses and the one mapping from failures to them.
headers
    Pure functions: UID checks, spool paths, ``InstanceInfo`` from a header.
sink
    ``InstanceSink`` (the seam the SCP talks to) and ``SpoolSink`` (durable write,
    then database record; the order is explained there).
handlers
    Thin pynetdicom handlers: association policy, C-ECHO, C-STORE.
queue
    ``CeleryTriageQueue``: sends ``triage.triage_study`` by name.
watcher
    ``StabilityWatcher``: runs the stability rounds in a thread.
server
    ``build_ae``, ``start_scp``, ``start_node_scp``, ``run_scp``.

Nothing is imported here, so ``import dicom_scp`` stays cheap.
"""
