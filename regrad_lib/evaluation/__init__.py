"""05_evaluate: every method on every dataset (evaluate) with its result files (results), sweeps (sweeps), the
storage-scheme frontier (frontier), one typed question (explore) and the run's learner loaded once (learner_once)."""
