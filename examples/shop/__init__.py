"""A realistic service under lifecycle: an HTTP API, sqlite, Redis Streams, a mailer, a job.

Run it (a private redis-server is started when ``REDIS_URL`` is not set)::

    python -m examples.shop

or watch a SIGTERM under load, with the counts of what was lost::

    python -m examples.shop demo

See examples/shop/README.md.
"""
