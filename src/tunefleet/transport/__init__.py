"""How hub messages move between the coordinator and its workers.

One interface (``_base``), several implementations: ``local`` (OS pipes to processes this
machine started) and ``tcp`` (authenticated ZeroMQ for workers anywhere). The coordinator and
the worker loop only see the interface, so the same wire protocol serves both.
"""
