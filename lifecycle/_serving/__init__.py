"""Serving: in-flight tracking, the one stop sequence, the servers, middleware, health.

Depends on the core only: servers see the app through a small typed view of
its shutdown (token, deadline, draining), never through the runtime's `App`.
"""
