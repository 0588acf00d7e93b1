"""etha's agent: runs a worker's command and restarts it in place per rendezvous generation.

The agent is one self-contained, stdlib-only file, :mod:`etha.agent.agent`, mounted into worker
containers whose images need not have etha; ``python -m etha.agent`` runs the same file.
"""
