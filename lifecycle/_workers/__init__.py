"""Workers: run-style components that are not servers (queue consumers, periodic jobs).

Depends on the core only; the runtime imports them, never the other way round.
"""
