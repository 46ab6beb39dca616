"""Pictures and summaries beside training and evaluation: TensorBoard dashboards, the run report, the console."""
