"""What runs: the job framework, run history, built-in jobs and the job catalog."""
