"""``spamtune serve``: a resident classifier over HTTP.

``app`` holds the API (FastAPI), ``batcher`` the dynamic batching on one inference thread,
``metrics`` the Prometheus metrics, ``verdicts`` the reading of texts and mail (as predict and filter),
``server`` the uvicorn runner, and ``static/`` the web page. Needs the ``serve`` extra.
"""
