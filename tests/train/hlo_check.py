"""Run with 4 fake CPU devices: compiles small programs whose HLO the tests read with
`pa_jax.train.hlo`, and prints one JSON line {case: [opcodes of collectives in loops]} plus
the number of while loops per case."""

import json
import sys

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from pa_jax.ops.per_device import per_image
from pa_jax.train import hlo


def halve_until_small(x):
  """One image: a data-dependent while loop (x [8] -> halved until its max < 1)."""
  return jax.lax.while_loop(lambda v: jnp.max(v) >= 1.0, lambda v: v * 0.5, x)


def main():
  mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  x = jax.ShapeDtypeStruct((8, 16), jnp.float32, sharding=NamedSharding(mesh, P("data")))

  def psum_in_loop(x):
    def local(v):
      return jax.lax.while_loop(lambda c: jax.lax.psum(jnp.max(c[0]), "data") >= 1.0,
                                lambda c: (c[0] * 0.5, c[1] + 1), (v, 0))[0]
    return jax.shard_map(local, mesh=mesh, in_specs=P("data"), out_specs=P("data"))(x)

  def psum_after_loop(x):
    def local(v):
      v = jax.lax.while_loop(lambda c: jnp.max(c) >= 1.0, lambda c: c * 0.5, v)
      return jax.lax.psum(jnp.sum(v), "data")
    return jax.shard_map(local, mesh=mesh, in_specs=P("data"), out_specs=P())(x)

  def gspmd_vmap(x):  # the problem in miniature: GSPMD all-reduces the batched predicate
    return jnp.sum(jax.vmap(halve_until_small)(x))

  def with_per_image(x):  # the fix: vmap inside shard_map over "data"
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return jnp.sum(per_image(halve_until_small, x))

  out = {}
  for f in (psum_in_loop, psum_after_loop, gspmd_vmap, with_per_image):
    text = jax.jit(f).lower(x).compile().as_text()
    module = hlo.parse(text)
    out[f.__name__] = {
        "in_loops": sorted({i.opcode for _, i in hlo.collectives_in_loops(module)}),
        "loops": len(hlo.while_loops(module)),
        "collectives": len(hlo.collectives(module)),
    }
  print(json.dumps(out))


if __name__ == "__main__":
  sys.exit(main())
