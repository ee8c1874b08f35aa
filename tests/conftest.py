import jax
import jax.random as jr
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def getkey():
    """A fresh, deterministic PRNG key on each call."""
    key = jr.key(5678)

    def _getkey():
        nonlocal key
        key, sub = jr.split(key)
        return sub

    return _getkey


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop every compiled program after each test module, so that each test process's
    memory stays that of one module (CI runs the suite in two processes on a small
    machine)."""
    yield
    jax.clear_caches()


@pytest.fixture(autouse=True)
def _optimised(request):
    """Tests marked `optimised` compile with every optimisation, also where `make test`'s
    parallel pass turns most off (JAX_DISABLE_MOST_OPTIMIZATIONS: its tests are bound by
    compiles; these by running)."""
    if request.node.get_closest_marker("optimised") is None:
        yield
        return
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)
