"""05_evaluate: every method on every dataset (evaluate) with a method's results (results), sweeps (sweeps),
regrad on each storage scheme's bank (frontier), one typed question (explore) and the run's learner loaded once
(learner_once)."""
