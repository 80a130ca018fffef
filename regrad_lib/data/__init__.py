"""Questions, passages and the text around them: passage corpora (corpus) and the corpus 01_index indexes
(indexed_corpus), QA records and their answer kinds (qa_records, metrics), the dataset loaders (datasets, pubmedqa),
the invented-people probes (probe, probe_binding, probe_transfer) and the chat-template prompts (prompts)."""
