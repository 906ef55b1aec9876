"""The tools around the runtime.

The command line, Kubernetes plans and lint, systemd notify, shutdown timelines.
"""
