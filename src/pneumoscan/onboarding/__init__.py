"""Fitting a model to a site, and recording where it came from (read back, in words, by
:mod:`pneumoscan.inference.provenance`).

* :mod:`.site`: ``adapt`` (AdaBN, EM prevalence, a site reference) from unlabelled films.
* :mod:`.operating_point`: ``calibrate``: the temperature and the operating threshold chosen on labelled films.
* :mod:`.trainset`: content hashes of a model's training films (refusing them as a "site").
* :mod:`.reference_builder`: building the scope/drift reference from a model and its films.
"""
