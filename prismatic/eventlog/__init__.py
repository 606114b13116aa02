"""The node's durable event log (LMDB); this module only re-exports.

``_log`` is the handle (appends, queries, replay), ``_group_commit`` its writer thread
(group commit, retention passes), ``_record`` the on-disk record format, ``_store`` opening
the LMDB environment, ``_query`` the read side, ``_retention`` deletion by age and size;
``_pages`` reads the data file without LMDB, for
``_verify`` (the check at every open, ``prismatic events verify``) and ``_salvage``
(``prismatic events salvage``).
"""

from prismatic.eventlog._log import EventLog, EventLogCounters, open_event_log
from prismatic.eventlog._query import EventFilter
from prismatic.eventlog._record import EventDraft, EventLogStats, EventRecord, RawEventRecord
from prismatic.eventlog._salvage import SalvageReport, salvage_log
from prismatic.eventlog._verify import VerifyReport, verify_log

__all__ = [
    "EventDraft", "EventFilter", "EventLog", "EventLogCounters", "EventLogStats", "EventRecord",
    "RawEventRecord", "SalvageReport", "VerifyReport", "open_event_log", "salvage_log",
    "verify_log",
]
