"""Model registry: `config.model.name` picks the class, the other `config.model`
keys are its constructor fields. Models are plain Flax modules that know
nothing of losses or optimizers; classifiers take `(x, *, train)`, VAEs have
`encode(x, y)` / `decode(z, y)` (see models/vae.py). Every model has a `dtype`
field, the computation dtype of its activations and matmuls, which `get` sets
from the top-level config.dtype (mixed precision: parameters stay float32, and
what feeds a loss is returned in float32)."""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.extend.random
import jax.numpy as jnp

from jaxvision.errors import ConfigError
from jaxvision.models import attention, cnn, cnn_rnn, gan, lstm, resnet, unet, vae, vit

MODELS: dict[str, type[nn.Module]] = {
  'cnn': cnn.CNN,
  'resnet': resnet.ResNet,
  'vit': vit.ViT,
  'attention': attention.AttentionClassifier,
  'lstm': lstm.LSTMClassifier,
  'cnn_rnn': cnn_rnn.CNNRNN,
  'gan_mlp': gan.MLPGAN,
  'dcgan': gan.DCGAN,
  'vae_mlp': vae.MLPVAE,
  'vae_conv': vae.ConvVAE,
  'vae_cond': vae.ConditionalVAE,
  'unet': unet.UNet,
}

# Tensor-parallel rules ((path regex, PartitionSpec) pairs, see jaxvision/parallel.py) of the
# models that split over the mesh's model axis; the others need mesh.model=1.
SHARDING_RULES: dict[str, tuple] = {'vit': vit.SHARDING_RULES}


# Fields a model gets from the task at run time, not from config.model: `dtype` (the computation
# dtype) comes from the top-level config.dtype.
RUNTIME_FIELDS = ('parent', 'name', 'batch_split', 'dtype')


def _fields(cls) -> list[dataclasses.Field]:
  """The constructor fields of a model class that `config.model` may set."""
  return [f for f in dataclasses.fields(cls) if f.init and f.name not in RUNTIME_FIELDS]


def defaults(name: str) -> dict:
  """The defaults of a model's config fields.

  Args:
    name: a key of `MODELS` (config.model.name).

  Returns:
    {field: default} for the constructor fields of model `name` that have one ({} if `name` is
    not a model).
  """
  cls = MODELS.get(name)
  return (
    {f.name: f.default for f in _fields(cls) if f.default is not dataclasses.MISSING} if cls else {}
  )


# Fields whose every value is a rate in [0, 1); fields that may be 0 (off); every other number
# of a model (widths, depths, sizes) must be >= 1.
_RATES = ('dropout', 'd_dropout', 'bn_momentum')
_MAY_BE_ZERO = ('num_classes', 'info_codes', 'vocab_size')
_MAY_BE_ZERO_IN = {'vae_conv': ('hidden',)}  # the conv VAE's dense layer is optional
CONV_IMPLS = ('xla', 'xla_subpixel', 'im2col')


def check_kwargs(model_config) -> None:
  """Checks config.model against the fields of the model it names, before any compute.

  Args:
    model_config: config.model; its `name` must be a key of `MODELS`.

  Raises:
    ConfigError: (one line) a key that is not a field of the model (`dtype` among them: it is
      the top-level config.dtype), a switch (a field typed
      `bool`, e.g. `remat`) that is not True or False, a rate outside [0, 1), a width or size
      below its minimum, or a `conv_impl` not in `CONV_IMPLS`.
  """
  cls = MODELS[model_config.name]
  fields = {f.name: f for f in _fields(cls)}
  allowed = list(fields)
  for key in model_config:
    if key == 'name':
      continue
    if key == 'dtype':
      raise ConfigError(
        f'model.dtype is not a config key; the computation dtype is the top-level dtype, '
        f'e.g. --config.dtype={model_config.dtype}'
      )
    if key not in allowed:
      raise ConfigError(
        f'model.{key} is not a field of model {model_config.name!r}; '
        f'its fields are: {", ".join(allowed)}'
      )
    value = model_config[key]
    if fields[key].type in (bool, 'bool'):
      if not isinstance(value, bool):
        raise ConfigError(f'model.{key}={value!r} must be True or False')
      continue
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if key in _RATES:
      bad = [v for v in numbers if not 0 <= v < 1]
      rule = 'in [0, 1)'
    elif key in _MAY_BE_ZERO + _MAY_BE_ZERO_IN.get(model_config.name, ()):
      bad = [v for v in numbers if v < 0]
      rule = '>= 0'
    else:
      bad = [v for v in numbers if v < 1]
      rule = '>= 1'
    if bad:
      raise ConfigError(
        f'model.{key}={value!r} must be {rule}' + (' (each)' if len(values) > 1 else '')
      )
    if key == 'conv_impl' and value not in CONV_IMPLS:
      raise ConfigError(
        f'model.conv_impl={value!r} is not allowed; use one of: {", ".join(CONV_IMPLS)}'
      )


def get(model_config, dtype: str = 'float32') -> nn.Module:
  """The model that config.model describes.

  Args:
    model_config: config.model: `name` picks the class in `MODELS`, the other keys are its
      constructor fields (lists become tuples, so the module stays hashable).
    dtype: the computation dtype of its activations and matmuls, config.dtype (a name of a jnp
      dtype, one of jaxvision.config.DTYPES); its parameters are float32 either way.

  Returns:
    The unbound Flax module.
  """
  kwargs = {k: v for k, v in model_config.to_dict().items() if k != 'name'}
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  return MODELS[model_config.name](**kwargs, dtype=getattr(jnp, dtype))


_THREEFRY = jax.extend.random.threefry_prng_impl


def _flat_threefry_bits(key, bit_width: int, shape):
  """threefry's bits for a flat array of prod(shape) values, reshaped to `shape`."""
  return _THREEFRY.random_bits(key, bit_width, (math.prod(shape),)).reshape(shape)


# threefry2x32 whose bits of shape s are drawn as prod(s) bits and reshaped: the same bits as
# threefry's, under either jax_threefry_partitionable setting.
_FLAT_THREEFRY = jax.extend.random.define_prng_impl(
  key_shape=_THREEFRY.key_shape,
  seed=_THREEFRY.seed,
  split=_THREEFRY.split,
  random_bits=_flat_threefry_bits,
  fold_in=_THREEFRY.fold_in,
  name='threefry2x32_flat',
  tag='fryflat',
)


def init(model: nn.Module, rngs, *args, **kwargs):
  """`model.init(rngs, *args, **kwargs)` with the same variables, bit for bit, compiled faster.

  XLA:CPU takes seconds to compile threefry's per-axis index arithmetic for an N-d parameter and
  a fraction of that for the same values drawn flat, and an init draws one array per kernel; here
  every draw is made flat and reshaped.

  Args:
    model: the Flax module.
    rngs: a raw uint32[2] key or a {collection: key} dict of them, as `model.init` takes.
    *args: the inputs `model.init` passes to the module.
    **kwargs: its keyword inputs (e.g. `train=False`).

  Returns:
    The variables, as `model.init(rngs, *args, **kwargs)` returns them.
  """
  wrap = lambda key: jax.random.wrap_key_data(jax.random.key_data(key), impl=_FLAT_THREEFRY)
  rngs = {k: wrap(v) for k, v in rngs.items()} if isinstance(rngs, dict) else wrap(rngs)
  return model.init(rngs, *args, **kwargs)
