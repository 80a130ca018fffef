"""Continual post-training, the baseline of the paper's drift claim: CPT on the bank's documents as a stream of chunks
(continual) and the measures of drift on persistent weights (drift)."""
