import numpy as np
import pytest

from tmdafm_core.data import PAPER_MATERIALS, LabelSpace, parse_elements


@pytest.mark.parametrize("name, elements", [
    ("MoS2", ("Mo", "S")), ("WS2", ("W", "S")), ("WSe2", ("W", "Se")), ("MoSe2", ("Mo", "Se")),
    ("Mo-WSe2", ("Mo", "W", "Se")), ("Mo0.5W0.5Se2", ("Mo", "W", "Se")), ("NbSe2", ("Nb", "Se")),
])
def test_parse_elements(name, elements):
    assert parse_elements(name) == elements


@pytest.mark.parametrize("bad", ["", "mos2", "MoX2", "Mo--WSe2", "MoS2!", None])
def test_parse_elements_rejects_non_formulas(bad):
    with pytest.raises(ValueError, match="material name"):
        parse_elements(bad)


def test_paper_label_space_matches_design():
    space = LabelSpace.from_materials(reversed(PAPER_MATERIALS))
    assert space.classes == PAPER_MATERIALS
    assert space.elements == ("Mo", "W", "S", "Se")
    expected = [[1, 0, 1, 0], [0, 1, 1, 0], [0, 1, 0, 1], [1, 0, 0, 1], [1, 1, 0, 1]]
    np.testing.assert_array_equal(space.element_matrix, expected)
    assert space.class_index("Mo-WSe2") == 4


def test_label_space_derived_for_other_materials():
    space = LabelSpace.from_materials(["NbSe2", "MoS2", "TaS2", "MoS2"])
    assert space.classes == ("MoS2", "NbSe2", "TaS2")
    assert space.elements == ("Mo", "S", "Se", "Nb", "Ta")
    np.testing.assert_array_equal(space.element_vector("TaS2"), [0, 1, 0, 0, 1])


def test_label_space_errors():
    with pytest.raises(ValueError, match="no material labels"):
        LabelSpace.from_materials([])
    space = LabelSpace.from_materials(["MoS2"])
    with pytest.raises(ValueError, match="not one of the classes"):
        space.class_index("WS2")
    with pytest.raises(ValueError, match="outside"):
        space.element_vector("WS2")
