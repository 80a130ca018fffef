"""Which corpus 01_index indexes: a passage file as it is, or a data set's own passages (PubMedQA's context
paragraphs, :mod:`regrad_lib.data.pubmedqa`) written once as a DPR-layout TSV, plus the knowledge-injection probe's
passages and the binding probe's when asked (:func:`probe.combined_corpus`, :func:`probe_binding.combined_corpus`)."""

from __future__ import annotations

import os
from pathlib import Path

from regrad_lib.data import probe, probe_binding, pubmedqa
from regrad_lib.io import params, paths

__all__ = ["prepare"]


@params.typed     # with_probe="false" is False: the text would add the probe
def prepare(corpus: str | os.PathLike, with_probe: bool = False, with_binding: bool = False,
            transfer: bool = False) -> Path:
    """The corpus file to index for 01_index's ``corpus`` (a ``.tsv``/``.jsonl`` passage file, or a PubMedQA folder
    holding ``ori_pqal.json``), ``probe``, ``probe_binding`` (the binding probe's passages added) and ``transfer``
    (the probe's transfer split too: a separate corpus)."""
    source = paths.resolve(corpus)
    if source.is_dir():
        if not (source / pubmedqa.ORIGINAL).is_file():
            raise FileNotFoundError(f"corpus={str(corpus)!r} is a folder without {pubmedqa.ORIGINAL}: give a passage "
                                    "file (DPR .tsv or .jsonl) or a PubMedQA folder (its context paragraphs are indexed)")
        source = pubmedqa.write_corpus(source)
    if transfer and not with_probe:
        raise ValueError("transfer = True adds the probe's transfer split beside the probe: set probe = True too")
    if with_binding:     # (the test chain indexes both extra sets in one corpus; the demo keeps them apart)
        path = probe_binding.combined_corpus(source) if with_probe else \
            probe.combined_corpus(source, probe_binding.passages_file(), suffix="binding")
        return probe.combined_corpus(path, probe.transfer_passages_file(), suffix="transfer") if transfer else path
    return probe.combined_corpus(source, transfer=transfer) if with_probe else source
