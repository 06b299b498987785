"""PyMySQL's own error objects for the errors that decide whether a transaction runs again:
the two MariaDB/Galera raise for a transaction rolled back whole, and two that are not that."""

from __future__ import annotations

import pymysql

DEADLOCK = pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock")
NOT_READY = pymysql.err.OperationalError(
    1047, "WSREP has not yet prepared node for application use"
)
LOST = pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query")
LOCK_WAIT = pymysql.err.OperationalError(1205, "Lock wait timeout exceeded")
