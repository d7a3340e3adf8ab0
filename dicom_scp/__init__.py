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
pynetdicom_tweaks
    What the node changes in pynetdicom, process-wide: PDUs read into one buffer,
    datasets received into files in the spool.
ae
    One process's SCP: ``build_ae``, ``event_handlers``, ``ssl_context``,
    ``start_scp``, the shared listening socket and ``spool_sink``.
listeners
    ``ListenerPool``: the extra SCP processes that share the DICOM port.
server
    The node's ingest side: ``start_node_scp``, ``run_scp``.

Nothing is imported here, so ``import dicom_scp`` stays cheap.
"""
