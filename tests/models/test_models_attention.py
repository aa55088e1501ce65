"""Factorized attention: numpy reference, init, padding mask, linear memory, attention render."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from pa_jax.models.attention import FactorizedAttention, render_attention
from pa_jax.models.padding import padding_mask


def _softmax(a, axis):
  e = np.exp(a - a.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def _numpy_reference(params, x):
  """Paper notation, x as C x N per image, everything explicit (including the N x N map)."""
  b, h, w, c = x.shape
  outs = []
  for i in range(b):
    xc = x[i].reshape(h * w, c).T.astype(np.float64)  # C x N

    def conv1x1(name, inp):  # W x + b with W = kernel^T
      return (
          np.asarray(params[name]["kernel"], np.float64).T @ inp
          + np.asarray(params[name]["bias"], np.float64)[:, None]
      )

    keys = _softmax(conv1x1("key", xc), axis=1)  # over positions
    queries = _softmax(conv1x1("query", xc), axis=0)  # over key channels
    values = conv1x1("value", xc)
    context = keys @ values.T  # Ck x Cv
    factorized = context.T @ queries  # Cv x N
    # Same thing through the explicit N x N attention map (rows sum to 1).
    attn = queries.T @ keys  # N x N
    np.testing.assert_allclose(attn.sum(axis=1), 1.0, rtol=1e-9)
    np.testing.assert_allclose(values @ attn.T, factorized, rtol=1e-9, atol=1e-12)
    out = xc + conv1x1("output", factorized)
    outs.append(out.T.reshape(h, w, c))
  return np.stack(outs)


def test_matches_numpy_reference(rand_vars):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 7, 12))
  module = FactorizedAttention(key_channels=6, value_channels=4, zero_init_output=False)
  variables = rand_vars(module, x)
  p = variables["params"]
  assert p["query"]["kernel"].shape == (12, 6) and p["value"]["kernel"].shape == (12, 4)
  assert p["output"]["kernel"].shape == (4, 12)
  y = jax.jit(module.apply)(variables, x)
  np.testing.assert_allclose(
      np.asarray(y), _numpy_reference(p, np.asarray(x)), rtol=1e-4, atol=1e-5
  )


def test_zero_init_is_identity_and_default_init_is_not():
  x = jax.random.normal(jax.random.PRNGKey(2), (1, 4, 4, 16))
  module = FactorizedAttention(zero_init_output=True)
  variables = jax.jit(module.init)(jax.random.PRNGKey(3), x)
  np.testing.assert_array_equal(np.asarray(jax.jit(module.apply)(variables, x)), np.asarray(x))
  assert variables["params"]["key"]["kernel"].shape == (16, 64)
  # The default is the release's: an ordinary (non-zero) init of the output projection.
  other = FactorizedAttention()
  v = jax.jit(other.init)(jax.random.PRNGKey(3), x)
  assert float(jnp.abs(v["params"]["output"]["kernel"]).max()) > 0
  y = jax.jit(other.apply)(v, x)
  assert not np.allclose(np.asarray(y), np.asarray(x))


def test_padding_mask_hand_case():
  # Stride 4, a 10 x 5 image in a 16 x 16 canvas (4 x 4 cells): rows 0-2 (pixels 0..11
  # start below 10) and columns 0-1 (pixels 0..7 start below 5) hold real pixels.
  m = np.asarray(padding_mask(jnp.array([[10, 5], [16, 16], [0, 0]]), (4, 4), 4))
  expected = np.zeros((4, 4), bool)
  expected[:3, :2] = True
  np.testing.assert_array_equal(m[0], expected)
  assert m[1].all() and not m[2].any()


def _pad_with_noise(x, pad, rng):
  """x [B, h, w, C] padded bottom/right by `pad` cells of large random values."""
  b, h, w, c = x.shape
  out = rng.normal(3.0, 4.0, (b, h + pad, w + pad, c)).astype(np.float32)
  out[:, :h, :w] = x
  return out


def test_key_softmax_excludes_padding(rand_vars):
  """With the mask, the output on the real cells equals the unpadded image's (numpy
  reference over its N = h * w positions) for 0 or 64 cells of padding; without, it does not."""
  rng = np.random.default_rng(5)
  h, w, c, stride = 5, 6, 8, 4
  x = rng.normal(size=(2, h, w, c)).astype(np.float32)
  module = FactorizedAttention(key_channels=4, value_channels=3)
  variables = rand_vars(module, jnp.asarray(x))
  ref = _numpy_reference(variables["params"], x)
  # Real image sizes whose last cells are only partly real still count those cells.
  size = jnp.array([[stride * h - 3, stride * w - 1]] * 2)
  apply = jax.jit(module.apply)
  masked = {}
  for pad in (0, 64):
    xp = _pad_with_noise(x, pad, rng)
    valid = padding_mask(size, xp.shape[1:3], stride)
    assert int(valid.sum()) == 2 * h * w
    masked[pad] = np.asarray(apply(variables, xp, valid))[:, :h, :w]
    np.testing.assert_allclose(masked[pad], ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(masked[64], masked[0], rtol=1e-6, atol=1e-6)
  unmasked = np.asarray(apply(variables, _pad_with_noise(x, 64, rng)))[:, :h, :w]
  assert np.abs(unmasked - ref).max() > 1e-2
  # The sown keys put exactly 0 on padding and sum to 1 over the real cells.
  xp = _pad_with_noise(x, 64, rng)
  _, st = module.apply(
      variables, xp, padding_mask(size, xp.shape[1:3], stride), mutable=["intermediates"]
  )
  keys = np.asarray(st["intermediates"]["keys"][0])
  assert np.all(keys[:, h:] == 0) and np.all(keys[:, :, w:] == 0)
  np.testing.assert_allclose(keys.sum(axis=(1, 2)), 1.0, rtol=1e-5)


def test_fully_padded_image_is_finite(rand_vars):
  x = jax.random.normal(jax.random.PRNGKey(6), (2, 4, 4, 8))
  module = FactorizedAttention(key_channels=4, value_channels=4)
  variables = rand_vars(module, x)
  valid = padding_mask(jnp.array([[0, 0], [16, 16]]), (4, 4), 4)
  y, grads = jax.jit(jax.value_and_grad(lambda v: jnp.sum(module.apply(v, x, valid) ** 2)))(
      variables
  )
  assert np.isfinite(float(y))
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  # No real key: the context is 0 and the block adds only the output bias.
  out = np.asarray(module.apply(variables, x, valid))
  bias = np.asarray(variables["params"]["output"]["bias"])
  np.testing.assert_allclose(out[0], np.asarray(x[0]) + bias, rtol=1e-6, atol=1e-6)


def test_linear_memory_on_512x512_positions(rand_vars):
  n_side, c = 512, 32
  n = n_side * n_side
  module = FactorizedAttention(zero_init_output=False)
  x = jnp.ones((1, n_side, n_side, c), jnp.float32) * 0.1
  variables = rand_vars(module, x[:, :4, :4])
  compiled = jax.jit(module.apply).lower(variables, x).compile()
  nxn_bytes = n * n * 4  # 275 GB: the attention map must never exist
  stats = compiled.memory_analysis()
  # The CPU backend of the pinned JAX reports it; without it this test would prove nothing.
  assert stats is not None and getattr(stats, "temp_size_in_bytes", None) is not None
  assert stats.temp_size_in_bytes < 1 << 30
  assert stats.temp_size_in_bytes < nxn_bytes / 1000
  y = compiled(variables, x)
  assert y.shape == x.shape and bool(jnp.isfinite(y).all())


def test_render_attention_equals_explicit_map(rand_vars):
  x = jax.random.normal(jax.random.PRNGKey(4), (2, 6, 5, 8))
  module = FactorizedAttention(key_channels=16, value_channels=8)
  variables = rand_vars(module, x)
  _, state = jax.jit(lambda v, x: module.apply(v, x, mutable=["intermediates"]))(variables, x)
  queries = state["intermediates"]["queries"][0]
  keys = state["intermediates"]["keys"][0]
  assert queries.shape == keys.shape == (2, 6, 5, 16)
  mask = np.zeros((2, 6, 5), bool)
  mask[0, 1, 2] = mask[0, 4, 0] = mask[0, 5, 4] = True
  mask[1, 2:4, 1:3] = True
  maps = jax.jit(jax.vmap(render_attention))(queries, keys, jnp.asarray(mask))
  assert maps.shape == (2, 6, 5)
  for i in range(2):
    q = np.asarray(queries[i], np.float64).reshape(30, 16)
    k = np.asarray(keys[i], np.float64).reshape(30, 16)
    attn = q @ k.T  # N x N: row = query position, column = attended position
    expected = attn[mask[i].reshape(-1)].mean(axis=0).reshape(6, 5)
    np.testing.assert_allclose(np.asarray(maps[i]), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(maps[i].sum()), 1.0, rtol=1e-5)
  empty = render_attention(queries[0], keys[0], jnp.zeros((6, 5), bool))
  np.testing.assert_array_equal(np.asarray(empty), 0.0)


def test_model_masks_padding_and_plumbs_the_init(rand_vars):
  """Inside MaskRCNN the P2 keys are 0 on the canvas padding beyond `image_size` when
  `attention_mask_padding`, not otherwise; `attention_zero_init` reaches the block."""
  from pa_jax.models.mask_rcnn import MaskRCNN, ModelSpec

  spec = ModelSpec(
      backbone="resnet18",
      backbone_width=8,
      norm="group_norm",
      fpn_channels=16,
      key_channels=8,
      value_channels=8,
      partial=True,
      attention_levels=("p2",),
  )
  image = jax.random.uniform(jax.random.PRNGKey(7), (1, 64, 64, 3))
  size = jnp.array([[40, 48]], jnp.int32)  # P2 cells: rows 0-9, columns 0-11 are real
  keys = {}
  for mask in (True, False):
    model = MaskRCNN(dataclasses.replace(spec, attention_mask_padding=mask))
    variables = rand_vars(model, image, size, method=MaskRCNN.attention_maps)
    _, st = jax.jit(
        lambda v, x, s: model.apply(
            v, x, s, method=MaskRCNN.attention_maps, mutable=["intermediates"]
        )
    )(variables, image, size)
    keys[mask] = np.asarray(st["intermediates"]["attention_p2"]["keys"][0][0])
  assert keys[True].shape == (16, 16, 8)
  assert np.all(keys[True][10:] == 0) and np.all(keys[True][:, 12:] == 0)
  np.testing.assert_allclose(keys[True][:10, :12].sum(axis=(0, 1)), 1.0, rtol=1e-5)
  assert np.all(keys[False][10:] > 0)
  for zero in (True, False):
    bound = MaskRCNN(dataclasses.replace(spec, attention_zero_init=zero)).bind(variables)
    assert bound.attention["p2"].zero_init_output is zero
