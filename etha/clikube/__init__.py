"""The cluster commands of ``etha`` (``etha status``, ``etha logs``; ``kubectl etha`` as a plugin).

``format`` is pure (a TrainingJob and its events in, text out); ``kube`` loads the kubeconfig like
kubectl and imports the ``kubernetes`` client lazily, so ``etha run-local`` needs none of it.
"""
