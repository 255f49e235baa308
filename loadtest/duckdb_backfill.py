"""The peer of `quiver-loadtest backfill`: the demo views' 12 features for every event, computed
by DuckDB window functions over the same events (Parquet), written to Parquet.

Windows are plain sliding RANGE frames [t - W, t] ordered by event time (Quiver's are sawtooth,
with a lateness rule in arrival order, and HyperLogLog distinct counts; DuckDB's distinct counts
are exact). The work is the same class: every event's vector over its entity's history.

usage: duckdb_backfill.py EVENTS.parquet OUT.parquet  -> one JSON line with the figures
"""
import json
import resource
import sys
import time

import duckdb

src, out = sys.argv[1], sys.argv[2]
con = duckdb.connect()
started = time.time()
con.execute(
    f"""
COPY (
  SELECT txn_id, user_id, merchant_id, event_time,
    count(*)                      OVER u1h   AS user_txn_count_1h,
    sum(amount)                   OVER u1h   AS user_amount_sum_1h,
    avg(amount)                   OVER u24h  AS user_amount_mean_24h,
    max(amount)                   OVER u24h  AS user_amount_max_24h,
    min(amount)                   OVER u24h  AS user_amount_min_24h,
    stddev_pop(amount)            OVER u7d   AS user_amount_stddev_7d,
    count(DISTINCT merchant_id)   OVER u24h  AS user_distinct_merchants_24h,
    last_value(country)           OVER ulife AS user_last_country,
    count(*)                      OVER ulife AS user_txn_count_lifetime,
    count(*)                      OVER m1h   AS merchant_txn_count_1h,
    sum(amount)                   OVER m24h  AS merchant_amount_sum_24h,
    count(DISTINCT user_id)       OVER m24h  AS merchant_distinct_users_24h
  FROM read_parquet('{src}')
  WINDOW
    u1h   AS (PARTITION BY user_id ORDER BY event_time
              RANGE BETWEEN INTERVAL 1 HOUR PRECEDING AND CURRENT ROW),
    u24h  AS (PARTITION BY user_id ORDER BY event_time
              RANGE BETWEEN INTERVAL 24 HOUR PRECEDING AND CURRENT ROW),
    u7d   AS (PARTITION BY user_id ORDER BY event_time
              RANGE BETWEEN INTERVAL 7 DAY PRECEDING AND CURRENT ROW),
    ulife AS (PARTITION BY user_id ORDER BY event_time
              ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
    m1h   AS (PARTITION BY merchant_id ORDER BY event_time
              RANGE BETWEEN INTERVAL 1 HOUR PRECEDING AND CURRENT ROW),
    m24h  AS (PARTITION BY merchant_id ORDER BY event_time
              RANGE BETWEEN INTERVAL 24 HOUR PRECEDING AND CURRENT ROW)
) TO '{out}' (FORMAT parquet, COMPRESSION zstd)
"""
)
seconds = time.time() - started
rows = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()[0]
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
print(
    json.dumps(
        {
            "seconds": seconds,
            "rows": rows,
            "peak_rss_mib": peak_mib,
            "threads": con.execute("SELECT current_setting('threads')").fetchone()[0],
        }
    )
)
