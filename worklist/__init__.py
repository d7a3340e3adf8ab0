"""The node's database, its worklist and its web application.

Everything node-wide (settings, logging, files, the clock, the database, migrations,
and the task, queue and instance contracts between the SCP, the worklist and the
workers) comes from :mod:`worklist.core`; the rest of this package is the worklist.
"""
