"""The rendezvous master: the process the operator runs in a job's master pod (and ``etha
run-local`` as a local process).

Its public faces are ``python -m etha.master`` (:mod:`etha.master.__main__`: the command line,
hosting the torch TCPStore the workers connect to) and :mod:`etha.master.status`, the one schema
of its ``GET /status`` document, which the master writes and the operator and ``etha run-local``
read. The other modules are the master's own: :mod:`~etha.master.peers` (who has connected, and
their ranks) and :mod:`~etha.master.status_http` (the status server).

Importing this package imports nothing else: the operator imports :mod:`etha.master.status`
without torch or prometheus_client.
"""
