"""``spamtune serve``: a resident classifier over HTTP.

``app`` holds the API (FastAPI), ``batcher`` the dynamic batching on one inference thread,
``metrics`` the Prometheus metrics, ``mailverdict`` what the service reads of a raw message,
``server`` the uvicorn runner, and ``static/`` the web page. Needs the ``serve`` extra.
"""
