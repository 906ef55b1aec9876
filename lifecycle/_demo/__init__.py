"""The demo of ``python -m lifecycle demo`` and its load generator.

Outside the library's import path: nothing in lifecycle imports this package
except the command line.
"""
