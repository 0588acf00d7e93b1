"""The etha operator: a kopf controller that runs TrainingJobs. Never imports torch."""
