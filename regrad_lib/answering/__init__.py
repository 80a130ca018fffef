"""One answering path for every method of 05_evaluate: what each method answers with (methods) and the harness
that decodes and scores it (harness)."""
