"""Which corpus 01_index indexes: a passage file as it is, or a data set's own passages (PubMedQA's context
paragraphs, :mod:`regrad_lib.pubmedqa`) written once as a DPR-layout TSV, plus the knowledge-injection probe's
passages when asked (:func:`probe.combined_corpus`)."""

from __future__ import annotations

import os
from pathlib import Path

from . import paths, probe, pubmedqa


def prepare(corpus: str | os.PathLike, with_probe: bool = False, transfer: bool = False) -> Path:
    """The corpus file to index for 01_index's ``corpus`` (a ``.tsv``/``.jsonl`` passage file, or a PubMedQA folder
    holding ``ori_pqal.json``), ``probe`` and ``transfer`` (the probe's transfer split too: a separate corpus)."""
    source = paths.resolve(corpus)
    if source.is_dir():
        if not (source / pubmedqa.ORIGINAL).is_file():
            raise FileNotFoundError(f"corpus={str(corpus)!r} is a folder without {pubmedqa.ORIGINAL}: give a passage "
                                    "file (DPR .tsv or .jsonl) or a PubMedQA folder (its context paragraphs are indexed)")
        source = pubmedqa.write_corpus(source)
    if transfer and not with_probe:
        raise ValueError("transfer = True adds the probe's transfer split beside the probe: set probe = True too")
    return probe.combined_corpus(source, transfer=transfer) if with_probe else source
