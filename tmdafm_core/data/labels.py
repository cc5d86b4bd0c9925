"""Material names, their element sets, and the label spaces of the two tasks.

MtC (multi-class) predicts one class index per image; MtL (multi-label) predicts the presence of each element.
Both are derived from the material names present in a data set, so any material system works; for the paper's five
TMDs the class and element orders are the paper's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

PAPER_MATERIALS = ("MoS2", "WS2", "WSe2", "MoSe2", "Mo-WSe2")
PAPER_ELEMENTS = ("Mo", "W", "S", "Se")

_PERIODIC_TABLE = frozenset("""
H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr Rb Sr Y Zr Nb Mo
Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl
Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og
""".split())
_TOKEN = re.compile(r"([A-Z][a-z]?)(\d*(?:\.\d+)?)")


def parse_elements(material: str) -> tuple[str, ...]:
    """Elements of a material name, in order of first appearance.

    Parts joined by ``-`` (alloys such as ``Mo-WSe2``) contribute their elements too; stoichiometric numbers are
    ignored.

    Parameters
    ----------
    material : str
        A chemical formula such as ``"MoS2"``, ``"Mo-WSe2"`` or ``"Mo0.5W0.5Se2"``.

    Returns
    -------
    tuple of str
        e.g. ``("Mo", "S")`` for MoS2 and ``("Mo", "W", "Se")`` for Mo-WSe2.

    Raises
    ------
    ValueError
        When the name is not a formula of known element symbols.
    """
    if not isinstance(material, str) or not material.strip():
        raise ValueError(f"material name {material!r}: expected a chemical formula such as 'MoS2'")
    elements: list[str] = []
    for part in material.strip().split("-"):
        tokens = _TOKEN.findall(part)
        if not part or "".join(symbol + count for symbol, count in tokens) != part:
            raise ValueError(f"material name {material!r}: {part!r} is not a chemical formula (e.g. 'MoS2', 'Mo-WSe2')")
        for symbol, _ in tokens:
            if symbol not in _PERIODIC_TABLE:
                raise ValueError(f"material name {material!r}: {symbol!r} is not an element symbol")
            if symbol not in elements:
                elements.append(symbol)
    return tuple(elements)


def _ordered(items, preferred) -> list:
    items = set(items)
    known = [item for item in preferred if item in items]
    return known + sorted(items - set(known))


@dataclass(frozen=True)
class LabelSpace:
    """Classes (MtC) and elements (MtL) of a data set.

    Attributes
    ----------
    classes : tuple of str
        Material names in class-index order (paper order first, then others sorted).
    elements : tuple of str
        Element symbols in MtL output order (Mo, W, S, Se first, then others sorted).
    element_matrix : ndarray of float32, shape (n_classes, n_elements)
        Row ``i`` is the element-presence vector of ``classes[i]``.
    """

    classes: tuple[str, ...]
    elements: tuple[str, ...]

    @classmethod
    def from_materials(cls, materials) -> LabelSpace:
        """Label space of the distinct material names in ``materials`` (any iterable of str)."""
        names = {m for m in materials if isinstance(m, str)}
        if not names:
            raise ValueError("no material labels: the data set has no labelled images")
        element_sets = {name: parse_elements(name) for name in names}
        classes = _ordered(names, PAPER_MATERIALS)
        elements = _ordered({e for es in element_sets.values() for e in es}, PAPER_ELEMENTS)
        return cls(tuple(classes), tuple(elements))

    @property
    def element_matrix(self) -> np.ndarray:
        return np.stack([self.element_vector(name) for name in self.classes])

    def class_index(self, material: str) -> int:
        try:
            return self.classes.index(material)
        except ValueError:
            raise ValueError(f"material {material!r} is not one of the classes {list(self.classes)}") from None

    def element_vector(self, material: str) -> np.ndarray:
        present = set(parse_elements(material))
        unknown = present - set(self.elements)
        if unknown:
            raise ValueError(f"material {material!r} has elements {sorted(unknown)} outside {list(self.elements)}")
        return np.array([e in present for e in self.elements], dtype=np.float32)

    def to_dict(self) -> dict:
        return {"classes": list(self.classes), "elements": list(self.elements)}
