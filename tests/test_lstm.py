"""The LSTM classifier's own time loop against flax's nn.RNN(nn.OptimizedLSTMCell): the same
parameters (tree and initial values), outputs and gradients, for images and padded tokens."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import init_variables
from jaxvision.models import layers, lstm


class FlaxReference(nn.Module):
  """LSTMClassifier as it was built on nn.RNN(nn.OptimizedLSTMCell): the reference."""

  num_classes: int
  input_shape: tuple[int, ...]
  hidden: int
  layers: int
  bidirectional: bool
  vocab_size: int = 0
  embed_dim: int = 6
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, *, train: bool):
    lengths = None
    if self.vocab_size:
      lengths = jnp.sum(x != 0, axis=1).astype(jnp.int32)
      h = nn.Embed(self.vocab_size, self.embed_dim, name='embed')(x)
    else:
      h = x.reshape(x.shape[0], x.shape[1], -1)
    for i in range(self.layers):
      fwd = nn.RNN(nn.OptimizedLSTMCell(self.hidden, name=f'lstm{i}'), return_carry=True)
      if self.bidirectional:
        bwd = nn.RNN(
          nn.OptimizedLSTMCell(self.hidden, name=f'lstm{i}_reverse'),
          return_carry=True,
          reverse=True,
          keep_order=True,
        )
        (c_f, out_f), (c_b, out_b) = (fwd(h, seq_lengths=lengths), bwd(h, seq_lengths=lengths))
        h = jnp.concatenate([out_f, out_b], axis=-1)
        final = jnp.concatenate([c_f[1], c_b[1]], axis=-1)
      else:
        (carry, h) = fwd(h, seq_lengths=lengths)
        final = carry[1]
      if i + 1 < self.layers:
        h = layers.Dropout(self.dropout, deterministic=not train)(h)
    final = layers.Dropout(self.dropout, deterministic=not train)(final)
    return nn.Dense(self.num_classes, name='head')(final)


IMAGES = jax.random.uniform(jax.random.PRNGKey(0), (3, 7, 5, 2))  # 7 steps of 10 features
# Padding at the end; one full-length row, one of length 1 and one of padding only.
TOKENS = jnp.array(
  [
    [5, 9, 3, 7, 0, 0, 0, 0],
    [4, 4, 8, 1, 2, 6, 1, 3],
    [2, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0],
    [3, 1, 4, 1, 5, 9, 2, 0],
  ]
)
CASES = [
  (kind, bidirectional, n)
  for kind in ('images', 'tokens')
  for bidirectional in (False, True)
  for n in (1, 2)
]


def _models(kind, bidirectional, n, dropout=0.0):
  """(the LSTMClassifier, its flax reference, the input) of one case."""
  kw = dict(num_classes=3, hidden=8, layers=n, bidirectional=bidirectional, dropout=dropout)
  if kind == 'tokens':
    kw.update(input_shape=TOKENS.shape[1:], vocab_size=20, embed_dim=6)
    x = TOKENS
  else:
    kw.update(input_shape=IMAGES.shape[1:])
    x = IMAGES
  return lstm.LSTMClassifier(**kw), FlaxReference(**kw), x


@pytest.mark.parametrize('kind,bidirectional,n', CASES)
def test_lstm_parameters_outputs_and_gradients_equal_flax_rnn(kind, bidirectional, n):
  model, reference, x = _models(kind, bidirectional, n)
  variables = init_variables(reference, jax.random.PRNGKey(3), x, train=False)
  # The same tree, shapes and initial values as the flax cells' (checkpoints load either way).
  ours = init_variables(model, jax.random.PRNGKey(3), x, train=False)
  assert jax.tree.structure(ours) == jax.tree.structure(variables)
  jax.tree.map(np.testing.assert_array_equal, ours, variables)

  def loss_and_grads(module):
    def loss(v, x):
      return jnp.sum(jnp.sin(module.apply(v, x, train=False)))

    argnums = (0, 1) if kind == 'images' else 0  # images: the input's gradient too (saliency)
    return jax.jit(jax.value_and_grad(loss, argnums=argnums))(variables, x)

  ours, theirs = loss_and_grads(model), loss_and_grads(reference)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ours, theirs)


def test_lstm_dropout_draws_the_flax_masks():
  model, reference, x = _models('images', True, 2, dropout=0.5)
  variables = init_variables(reference, jax.random.PRNGKey(3), x, train=False)
  rngs = {'dropout': jax.random.PRNGKey(4)}
  np.testing.assert_allclose(
    model.apply(variables, x, train=True, rngs=rngs),
    reference.apply(variables, x, train=True, rngs=rngs),
    rtol=1e-5,
    atol=1e-6,
  )


def test_lstm_computes_in_bfloat16_with_float32_gradients():
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 4, 5))
  w = 0.3 * jax.random.normal(jax.random.PRNGKey(1), (5 + 8, 32))
  b = 0.1 * jax.random.normal(jax.random.PRNGKey(2), (32,))

  def grads(dtype):
    loss = lambda x, w, b: jnp.sum(jnp.sin(lstm.lstm(x, w, b, reverse=True, dtype=dtype)))
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, w, b)

  low, high = grads(jnp.bfloat16), grads(None)
  assert all(g.dtype == jnp.float32 for g in low)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0.1, atol=0.05), low, high)
