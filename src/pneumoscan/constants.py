"""The words and names every part of pneumoscan shares, written once."""

from __future__ import annotations

__all__ = ["CAUSE_CAVEAT", "CAUSE_WORDS", "CLASS_NAMES", "DECISION_WORDS", "DEFAULT_CACHE_DIR", "DISCLAIMER", "DISCLAIMER_SHORT", "UNFAMILIAR_CAUTION", "IMAGE_SUFFIXES",
           "INTENDED_USE", "JUNK_NAMES", "NOT_READ_WORDS", "OTHER_IMAGE_SUFFIXES", "OUT_OF_SCOPE", "SCORE_SCALE",
           "SUPPORTED_FORMATS"]

#: Class names; the label of a class is its position (0 NORMAL, 1 PNEUMONIA). Also the two decisions.
CLASS_NAMES = ("NORMAL", "PNEUMONIA")

#: The decision of an image the scope gate refused (not assessed): never PNEUMONIA or NORMAL.
OUT_OF_SCOPE = "OUT_OF_SCOPE"

#: The one wording of a decision for people, keyed by the machine label (``decision`` in the API, CSV and JSON,
#: which stays ``PNEUMONIA``/``NORMAL``/``OUT_OF_SCOPE``). The page, the CSVs' ``decision_text`` column, the CLI and
#: the report all say these words and no others.
DECISION_WORDS = {
    "PNEUMONIA": "Flagged: possible pneumonia",
    "NORMAL": "Not flagged",
    "OUT_OF_SCOPE": "Not assessed (out of scope)",
}
#: The one wording of a flagged film's cause (``cause`` in the API, CSV and JSON: ``BACTERIAL``/``VIRAL``; empty for
#: every film that is not flagged). Shown with the viral score on 0-100; never a treatment recommendation.
CAUSE_WORDS = {
    "BACTERIAL": "pattern more like bacterial",
    "VIRAL": "pattern more like viral",
}
#: What the cause is, said wherever it is shown.
CAUSE_CAVEAT = ("The cause is weaker evidence than the main finding, learned from the data set's bacterial/viral "
                "labels (no microbiology), and is not a treatment recommendation.")
#: The wording for a file that could not be read (it has no decision).
NOT_READ_WORDS = "Could not be read"

#: People see a score on 0 to 100 (the probability times SCORE_SCALE, one decimal) and the threshold on the same
#: scale; files and the API keep the probability on 0 to 1. See :func:`pneumoscan.metrics.point.score_100`.
SCORE_SCALE = 100

#: Shown with every score: in the CLI's summary, the worklists, the web page, the API and the report.
DISCLAIMER = ("Decision support, not a diagnosis: pneumoscan is a second reader that corroborates a clinician. "
              "Every result must be reviewed by a qualified clinician.")

#: The disclaimer's short form, for captions burned into pictures (the Secondary Capture, heatmap overlays).
DISCLAIMER_SHORT = "Decision support, not a diagnosis."
#: The caution on a film the gate scored although it is unlike the training films (a chest radiograph near the
#: boundary of the content check): it is scored, and this says to read that score with care.
UNFAMILIAR_CAUTION = "Unfamiliar film: a chest radiograph unlike the training films; read the score with caution"

#: What the shipped model is for, and what it was never tested on.
INTENDED_USE = (
    "Second reader for pneumonia on pediatric (about 1 to 5 years) frontal chest X-rays, alongside a clinician. "
    "Not tested on adults, lateral views, other hospitals or other vendors' DICOM."
)

#: File name endings of the formats pneumoscan reads (the content decides; the name only finds candidates).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff"})
#: Image formats it does not read: a folder's files with these endings are reported, not skipped in silence.
OTHER_IMAGE_SUFFIXES = frozenset({".gif", ".webp", ".jp2", ".j2k", ".jpf", ".jpx", ".heic", ".heif", ".avif",
                                  ".jfif"})
#: Operating-system litter found in image folders (compared in lower case); hidden files (``._x.png``) count too.
JUNK_NAMES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", ".ds_store", "icon\r"})
#: For messages.
SUPPORTED_FORMATS = "JPEG, PNG, DICOM, BMP or TIFF"

#: Where decoded images are cached when no folder is given (relative to the working directory).
DEFAULT_CACHE_DIR = ".pneumoscan-cache"
