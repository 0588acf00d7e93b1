"""The job model: what a TrainingJob asks for (spec), the names and manifests of the pods that
carry it out (names, builders, env, security) and how to read a pod (pods).

Pure and shared by the operator and ``etha run-local``: no kopf, no kubernetes client, no torch.
"""
