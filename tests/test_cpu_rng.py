"""dynabert_jax.cpu_rng: the unrolled Threefry lowering on CPU changes no random bit."""
import json
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent("""
    import json, numpy as np, jax, jax.numpy as jnp
    import flax.linen as nn
    from dynabert_jax import cpu_rng

    key = jax.random.PRNGKey(7)
    def make_draw():  # a new function each time: jit caches by function
        def draw(k):
            return (jax.random.bernoulli(k, 0.9, (3, 4, 33, 17)),
                    jax.random.uniform(jax.random.fold_in(k, 1), (1000,)),
                    nn.Dropout(0.1).apply({}, jnp.ones((8, 64)), deterministic=False,
                                          rngs={"dropout": k}))
        return jax.jit(draw)
    def run():
        f = make_draw()
        loops = f.lower(key).as_text().count("stablehlo.while")
        return [np.asarray(x) for x in f(key)], loops
    before, loops_before = run()
    first = cpu_rng.unroll_threefry_on_cpu()
    again = cpu_rng.unroll_threefry_on_cpu()
    after, loops_after = run()
    undone, undone_again = cpu_rng.restore_default_on_cpu(), cpu_rng.restore_default_on_cpu()
    restored, loops_restored = run()
    print(json.dumps({"applied": [first, again], "undone": [undone, undone_again],
                      "loops": [loops_before, loops_after, loops_restored],
                      "same": [bool((a == b).all() and (a == c).all())
                               for a, b, c in zip(before, after, restored)]}))
""")


def test_unrolled_threefry_same_bits_and_no_loop():
    # A fresh process: the switch is process-wide and must be compared with the default.
    p = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                       env={"JAX_PLATFORMS": "cpu", "PATH": ""}, timeout=300)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["applied"] == [True, True]
    assert r["undone"] == [True, False]
    # the default CPU lowering is rolled, and is again once restored
    assert r["loops"][0] > 0 and r["loops"][1] == 0 and r["loops"][2] == r["loops"][0]
    assert r["same"] == [True, True, True]


def test_default_config_turns_it_on():
    from configs import default
    assert default.get_config().cpu_unrolled_threefry is True
