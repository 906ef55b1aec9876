"""The runtime: the `App` registry, components, the per-run state and the runners.

Imports the core, and the serving layer only for the health endpoint.
"""
