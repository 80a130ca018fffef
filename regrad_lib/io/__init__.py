"""Files, folders and processes: where every artifact lives (paths), typed parameters and folder names (params),
atomic writes and provenance (artifacts), which folders the project owns (ownership), one writer per run (runlock),
checksummed tensor files (tensorfile), training checkpoints and a run's state on disk (checkpoint, run_state), the
processes of a job (distributed) and the tolerances of comparisons across thread counts (tolerance). No model here."""
