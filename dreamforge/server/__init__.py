"""``df serve``: the v1 HTTP API over the job service."""
