"""mlbatch: one SNS batch event -> exactly one 15-minute ML pipeline run."""
