"""The live web dashboard: another subscriber of the broker, beside the collector.

It listens to ``status/+``, ``sensors/+/climate``, ``predictions/#`` and ``errors/+``, keeps a
bounded history per node in memory (store.py), and serves it over HTTP: an overview, a page
per node, a JSON API and Server-Sent Events for live updates (server.py). It never publishes.
"""
