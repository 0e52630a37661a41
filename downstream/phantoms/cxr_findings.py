"""CheXpert-like multi-label chest films: five drawn findings, and labels as a report labeller writes them.

The film and its findings come from det_vindr.chest_case (each finding a distinct shape at a plausible
place). The label columns are five of CheXpert's observations, each tied to one drawn shape, plus
"No Finding":
    Enlarged Cardiomediastinum <- aortic knob     Cardiomegaly <- enlarged heart
    Lung Lesion                <- nodule          Pleural Effusion <- basal fluid
    Pleural Other              <- apical thickening
A finding is present with P_PRESENT. What the "report" says is then 1, 0, -1 (uncertain) or blank (not
mentioned), as CheXpert's labeller: uncertain is more likely for a present finding than for an absent one
(P_UNCERTAIN), so an uncertain label is a weak positive (about 57 % present), which is what the uncertain-
label policies (ones, zeros, LSR-ones, ignore) disagree about; blanks are mostly absent findings (P_BLANK).
"No Finding" is 1 when nothing is present, else blank (CheXpert leaves it blank beside a finding).
"""
from __future__ import annotations

import numpy as np

from medssl_bench.downstream.phantoms.det_vindr import (
    AORTIC, CARDIOMEGALY, EFFUSION, NODULE, THICKENING, chest_case, display, window_of,
)

NO_FINDING = "No Finding"
DRAWN = {"Enlarged Cardiomediastinum": AORTIC, "Cardiomegaly": CARDIOMEGALY, "Lung Lesion": NODULE,
         "Pleural Effusion": EFFUSION, "Pleural Other": THICKENING}
FINDINGS = [NO_FINDING, *DRAWN]
P_PRESENT = 0.35
P_UNCERTAIN = {True: 0.2, False: 0.08}  # by truth: 0.35*0.2 / (0.35*0.2 + 0.65*0.08) = 57 % of uncertain are present
P_BLANK = {True: 0.05, False: 0.4}  # by truth: "not mentioned" is mostly "not there"


def report(rng: np.random.Generator, present: dict[str, bool]) -> list[str]:
    """The csv cells of one film, in FINDINGS order: "1.0", "0.0", "-1.0" or "" (CheXpert's spelling)."""
    cells = ["1.0" if not any(present.values()) else ""]
    for name in DRAWN:
        truth = present[name]
        if rng.random() < P_UNCERTAIN[truth]:
            cells.append("-1.0")
        elif rng.random() < P_BLANK[truth]:
            cells.append("")
        else:
            cells.append("1.0" if truth else "0.0")
    return cells


def film(key, size: int) -> tuple[np.ndarray, dict[str, bool], list[str]]:
    """(8-bit film, the truth per drawn finding, its report cells) for `key` (a seed sequence)."""
    rng = np.random.default_rng([*key, 1])
    present = {name: bool(rng.random() < P_PRESENT) for name in DRAWN}
    case = chest_case(key, size, [DRAWN[n] for n, on in present.items() if on])
    return display(case.image, *window_of(case.image)), present, report(rng, present)
