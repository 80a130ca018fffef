"""03_train: the meta-training loop (train), its tasks and validation slice (train_data), optimizer and schedule
(schedule) and the run folder (run_folder)."""
