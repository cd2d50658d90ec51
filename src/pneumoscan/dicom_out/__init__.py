"""DICOM results out: a Structured Report and a Secondary Capture per DICOM input, in the input's own study, made
from the input's :class:`~pneumoscan.result.Result` alone (nothing here runs a model, decodes a film again or
decides: the decision, the caption and the heatmap are the result's).

Both are made with highdicom (so its checks run while they are built), placed in the source's study (same
StudyInstanceUID) in a new series each, with the source's patient and study modules copied:

* :func:`make_sr`: a Comprehensive 3D SR, TID 1500 Measurement Report with one measurement group (TID 1501) that
  holds the pneumonia probability (NUM, unit ``{probability}``), the operating threshold (NUM), the decision as a
  coded finding (SCT 233604007 Pneumonia, SCT 17621005 Normal, or a local code for "not assessed"), whether the
  image was in scope (CODE yes/no) and why not (TEXT), the algorithm's identification (TID 4019: name
  ``pneumoscan <model>`` and the model's version) and the decision-support disclaimer (TEXT); a flagged film of a
  model with a cause output gets a second group whose finding is SCT 53084003 Bacterial pneumonia or 75570004 Viral
  pneumonia, with P(viral) and the cause threshold (NUM) and the caveat that the cause is weaker evidence (TEXT). An image out of
  scope gets no probability in the SR: a PACS viewer would show it as a risk (the worklists keep it, for audit).
  The report is COMPLETE, UNVERIFIED and PRELIMINARY: a clinician's reading is the final one.
* :func:`make_sc`: a Secondary Capture (RGB) of the heatmap overlay on the film the result kept, with the result's
  caption (:meth:`~pneumoscan.result.Result.caption`: the decision words, the score and threshold on 0-100,
  "Decision support, not a diagnosis"; out of scope "Not assessed (out of scope): <reason>" over the film alone)
  burned in on a band above the film, so the caption hides no anatomy; BurnedInAnnotation YES.
* :func:`write_dicom_results`: both, for a source file or its bytes (its header), written as ``<SOPInstanceUID>.dcm``
  atomically, owner-only, never replacing a file; with ``pseudonym_key`` the outputs carry keyed pseudonyms
  (:func:`pseudonymise_dataset`).
* :class:`DicomBatch` / :func:`write_dicom_batch`: what ``predict --dicom-out`` does for each result as it is made
  (one file's failure is that file's note).

Every UID made here (series, SOP instances, tracking and device UIDs) is under :data:`UID_ROOT` (:func:`new_uid`), so
that pneumoscan knows its own SR and SC exactly (:func:`is_own_uid`: an SR/SC class and a UID under that root).

Both pass dicom3tools' ``dciodvfy`` without an error (``tests/test_dicom_validate.py``; ``docs/dicom_conformance.md``
lists the warnings left and why): the SR declares its local coding scheme :data:`CODING_SCHEME` (with
:data:`CODING_SCHEME_UID`) in its Coding Scheme Identification Sequence; the SC carries the source's Body Part
Examined and a Laterality as the General Series module wants it (absent for a chest); both keep the source's Specific
Character Set when it is a valid DICOM value, else are written in UTF-8.

Modules: :mod:`.source` (reading, checking, copying and pseudonymising the source header; the UID root), :mod:`.sr`,
:mod:`.sc`, :mod:`.write` (files, Part 10 bytes and batches).

Decision support, not a diagnosis.
"""

from __future__ import annotations

from pneumoscan.dicom_out.sc import make_sc, sc_pixels
from pneumoscan.dicom_out.source import (
    CODING_SCHEME,
    CODING_SCHEME_UID,
    MANUFACTURER,
    OWN_SOP_CLASSES,
    SC_SERIES_NUMBER,
    SR_SERIES_NUMBER,
    UID_ROOT,
    DicomOutputError,
    is_own_uid,
    new_uid,
    pseudonymise_dataset,
    read_source,
)
from pneumoscan.dicom_out.sr import make_sr
from pneumoscan.dicom_out.write import (
    DicomBatch,
    is_dicom_file,
    part10_bytes,
    write_dataset,
    write_dicom_batch,
    write_dicom_results,
)

__all__ = ["CODING_SCHEME", "CODING_SCHEME_UID", "MANUFACTURER", "OWN_SOP_CLASSES", "SC_SERIES_NUMBER",
           "SR_SERIES_NUMBER", "UID_ROOT", "DicomBatch", "DicomOutputError", "is_dicom_file", "is_own_uid", "make_sc",
           "make_sr", "new_uid", "part10_bytes", "pseudonymise_dataset", "read_source", "sc_pixels", "write_dataset",
           "write_dicom_batch", "write_dicom_results"]
