"""The node's durable event log (LMDB); this module only re-exports.

``_log`` is the handle (group-committed appends, queries, replay, retention), ``_record``
the on-disk record format, ``_store`` opening and checking the LMDB environment, ``_query``
the read side and ``_retention`` deletion by age and size.
"""

from prismatic.eventlog._log import EventLog, EventLogCounters, open_event_log
from prismatic.eventlog._query import EventFilter
from prismatic.eventlog._record import EventDraft, EventLogStats, EventRecord, RawEventRecord

__all__ = [
    "EventDraft", "EventFilter", "EventLog", "EventLogCounters", "EventLogStats", "EventRecord",
    "RawEventRecord", "open_event_log",
]
