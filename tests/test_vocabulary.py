"""One vocabulary: British spelling, no two public classes of one name, and the former
names kept as deprecated aliases that warn."""

import importlib
import subprocess
import sys

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import deepest
import deepest.discretisations
import deepest.integrators

NAMESPACES = (
    "deepest",
    "deepest.annealing",
    "deepest.minimisers",
    "deepest.discretisations",
    "deepest.integrators",
    "deepest.models",
    "deepest.experiments",
)


def _public_classes(module_name):
    """The public classes of a namespace, read from its dict: the module's `__getattr__`
    (the deprecated aliases) is not consulted."""
    module = importlib.import_module(module_name)
    return {
        name: value
        for name, value in vars(module).items()
        if not name.startswith("_") and isinstance(value, type)
    }


def test_no_two_public_classes_share_a_name():
    seen = {}
    for module_name in NAMESPACES:
        for name, cls in _public_classes(module_name).items():
            seen.setdefault(name, {})[id(cls)] = f"{module_name}.{name}"
    clashes = {name: sorted(where.values()) for name, where in seen.items() if len(where) > 1}
    assert not clashes, f"different classes of one name: {clashes}"


def test_import_deepest_emits_no_warning():
    code = "import deepest, deepest.discretisations, deepest.integrators, deepest.experiments"
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True)


# (module, old name, module, new name): each former name is the same object, with a warning
RENAMED = [
    ("deepest", "Training", "deepest", "training"),
    ("deepest.integrators", "RK4", "deepest.integrators", "ClassicalRK4"),
    ("deepest.integrators", "GaussLegendre", "deepest.integrators", "SymplecticGaussLegendre"),
    (
        "deepest.discretisations",
        "AbstractDiscretization",
        "deepest.discretisations",
        "AbstractDiscretisation",
    ),
    ("deepest.discretisations", "DISCRETIZATIONS", "deepest.discretisations", "DISCRETISATIONS"),
    (
        "deepest.discretisations",
        "as_discretization",
        "deepest.discretisations",
        "as_discretisation",
    ),
]


@pytest.mark.parametrize(
    "old_module, old, new_module, new", RENAMED, ids=[f"{r[0]}.{r[1]}" for r in RENAMED]
)
def test_former_name_warns_and_is_the_new_object(old_module, old, new_module, new):
    with pytest.warns(DeprecationWarning, match=new):
        value = getattr(importlib.import_module(old_module), old)
    assert value is getattr(importlib.import_module(new_module), new)


def test_deprecated_discretizations_module():
    sys.modules.pop("deepest.discretizations", None)
    vars(deepest).pop("discretizations", None)
    with pytest.warns(DeprecationWarning, match="deepest.discretisations"):
        module = deepest.discretizations
    assert module.RK4 is deepest.discretisations.RK4
    assert module.GaussLegendre is deepest.discretisations.GaussLegendre
    with pytest.warns(DeprecationWarning, match="AbstractDiscretisation"):
        assert module.AbstractDiscretization is deepest.discretisations.AbstractDiscretisation
    with pytest.warns(DeprecationWarning, match="as_discretisation"):
        assert module.as_discretization("rk4") is deepest.discretisations.as_discretisation("rk4")
    sys.modules.pop("deepest.discretizations", None)
    vars(deepest).pop("discretizations", None)
    with pytest.warns(DeprecationWarning, match="deepest.discretisations"):
        from deepest import discretizations  # noqa: F401


def test_unknown_names_still_raise():
    with pytest.raises(AttributeError):
        deepest.NoSuchThing  # noqa: B018
    with pytest.raises(AttributeError):
        deepest.integrators.NoSuchThing  # noqa: B018
    with pytest.raises(AttributeError):
        deepest.discretisations.NoSuchThing  # noqa: B018


def _observations():
    return deepest.Observations(
        [0.0, 0.5, 1.0], [[1.0], [0.5], [0.2]], observed=[0], truth=np.ones((3, 2))
    )


def _field(t, x, p):
    return p["a"] * x


def test_discretization_keyword_warns():
    data = _observations()
    new = deepest.Assimilation(
        _field, data, 2.0, discretisation="rk4", params={"a": -1.0}, estimate=("a",)
    )
    with pytest.warns(DeprecationWarning, match="discretisation"):
        old = deepest.Assimilation(
            _field, data, 2.0, discretization="rk4", params={"a": -1.0}, estimate=("a",)
        )
    assert old.discretisation == new.discretisation == deepest.discretisations.RK4()
    with pytest.warns(DeprecationWarning, match="discretisation"):
        assert old.discretization == new.discretisation
    with pytest.raises(TypeError, match="discretization"):
        deepest.Assimilation(
            _field,
            data,
            2.0,
            discretisation="euler",
            discretization="rk4",
            params={"a": -1.0},
            estimate=("a",),
        )


def test_training_is_a_function_of_exported_problems():
    net = deepest.LayeredNetwork([2, 3, 2], key=jr.key(0))
    x = jnp.ones((4, 2))
    problem = deepest.training(net, x, x, rm=1.0)
    assert isinstance(problem, deepest.LayeredTraining)
    assert isinstance(problem, deepest.AbstractTraining)
    with pytest.warns(DeprecationWarning, match="deepest.training"):
        old = deepest.Training(net, x, x, rm=1.0)
    assert type(old) is deepest.LayeredTraining
    assert issubclass(deepest.RecurrentTraining, deepest.AbstractTraining)


def test_discretization_config_key_warns():
    from deepest.experiments import ProblemConfig

    assert ProblemConfig(discretisation="rk4").discretisation == "rk4"
    with pytest.warns(DeprecationWarning, match="problem.discretisation"):
        assert ProblemConfig(discretization="rk4").discretisation == "rk4"
    with pytest.raises(ValueError, match="discretisation"):
        ProblemConfig(discretisation="rk4", discretization="euler")
