"""The node's ground floor: what every process of the node shares.

- :mod:`worklist.core.settings`: the one ``Settings`` object (``load_settings``);
- :mod:`worklist.core.logs`: logging set-up of every entry point;
- :mod:`worklist.core.files`: file-system steps (directory fsync);
- :mod:`worklist.core.clock`: ``utcnow`` and ``as_utc``;
- :mod:`worklist.core.db`: the declarative ``Base``, ``make_engine`` and
  ``open_database(settings)``;
- :mod:`worklist.core.migrate`: Alembic migrations, run programmatically;
- :mod:`worklist.core.contracts`: task and queue names, the triage-queue protocol
  and the received-instance types that the SCP, the worklist and the workers share.

Nothing here imports the rest of the node.
"""
