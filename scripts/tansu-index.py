#!/usr/bin/env python3
"""Adds the index tansu 0.6.0's sqlite engine lacks.

tansu looks up the headers of every record it fetches with a query that scans its whole
`header` table (there is no index on (topition, offset_id)), so each fetched record costs
time proportional to all headers ever stored: about 1 ms per record at 15,000 headers,
after which a consumer catching up stalls the broker. With the index a lookup takes
microseconds. Run with the broker's sqlite file once the broker has started (it creates
its tables at start); safe to run again.
"""
import sqlite3
import sys
import time

database = sys.argv[1]
deadline = time.monotonic() + 60
while True:
    try:
        connection = sqlite3.connect(database, timeout=10)
        connection.execute(
            "CREATE INDEX IF NOT EXISTS feedstream_header_by_record"
            " ON header (topition, offset_id)"
        )
        connection.commit()
        connection.close()
        break
    except sqlite3.OperationalError as error:  # no tables yet, or the database is busy
        if time.monotonic() > deadline:
            sys.exit(f"could not index the tansu database {database}: {error}")
        time.sleep(0.2)
