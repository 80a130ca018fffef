"""Files, folders and processes: where every artifact lives (paths), typed parameters and folder names (params),
atomic writes and provenance (artifacts), which folders the project owns (ownership), one writer per run (runlock),
checksummed tensor files (tensorfile), training checkpoints and a run's state on disk with its training log and step
sizes (checkpoint, run_state), 05_evaluate's result files with one reader and one writer each (result_files), the
processes of a job (distributed) and the tolerances of comparisons across thread counts (tolerance). No model here."""
