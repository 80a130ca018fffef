"""03_train: the meta-training loop (train: its checkpointed state and its steps), its tasks and validation slice
(train_data), optimizer and schedule (schedule) and the run folder (run_folder)."""
