"""Signed webhooks: an outbox of deliveries written with the events they announce, and a
deliverer that sends them (Standard Webhooks), retrying on a schedule.

    events row ──same transaction──► webhook_deliveries row (outbox.py, called by the job store)
                                          │
    deliverer thread (df worker, df serve) claims due rows ─► POST, signed ─► delivered | retry | dead

Only ``outbox`` and ``config`` are light: the job store and the settings import them. The
deliverer imports httpx and standardwebhooks when it starts.
"""
