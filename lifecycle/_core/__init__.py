"""The pure core: tokens, errors, the dependency graph, states and the scheduler.

No event loop, no signals and no clock of its own: time is passed in. The
only thread is the tokens' shared deadline timer (and the callback thread it
hands user callbacks to). Nothing here imports from the runtime, serving or
tools layers.
"""
