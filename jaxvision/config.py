"""The config keys every run shares, their defaults, and their validation.

Every experiment config (`configs/*.py`) starts from `tasks.base_config(task)`:
`base()` below, plus the keys its task owns (e.g. `loss.*` of the VAE,
`gan.*`), and changes what it needs. `validate()` checks the shared keys
before any compute: a bad value raises `ConfigError` with one line naming the
key and what is allowed. Each task checks its own keys (`tasks.validate`).
"""

import importlib.util
import math

import ml_collections

from jaxvision.errors import ConfigError

OPTIMIZERS = ('adam', 'adamw', 'sgd', 'momentum')
SCHEDULES = ('constant', 'cosine', 'warmup_cosine', 'onecycle')
SCALES = ('zero_one', 'minus_one_one', 'imagenet')
AUGMENTS = ('none', 'shift', 'crop_flip', 'inception_crop')
# The models' computation dtype: activations and matmuls; parameters, optimizer state, BatchNorm
# statistics and the losses are float32 either way (mixed precision).
DTYPES = ('float32', 'bfloat16')


def base() -> ml_collections.ConfigDict:
  """The keys every run shares: what it trains on, how, for how long, and on which devices.

  Returns:
    A new ConfigDict with their defaults.
  """
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = 'classification'
  c.allow_config_change = False  # resume a workdir written with another config
  c.debug_nans = False  # jax_debug_nans: re-run a NaN-producing op un-jitted to name it (slow)
  c.dtype = 'float32'  # 'bfloat16': activations and matmuls in bf16, params and losses in f32

  c.model = ml_collections.ConfigDict()
  c.model.name = 'cnn'  # the other model.* keys are the model's constructor fields

  c.init_from = ml_collections.ConfigDict()  # transfer learning, see jaxvision/transfer.py
  c.init_from.path = ''  # a workdir or checkpoint to take parameters from; '' = off
  c.init_from.include = ('.*',)  # regexes over parameter paths (Conv_0/kernel, ...)
  c.init_from.exclude = ()  # e.g. ('Dense_1/.*',): keep the head freshly initialised
  c.freeze = ()  # regexes of parameter paths that are not trained

  c.data = ml_collections.ConfigDict()
  c.data.name = 'mnist10k'
  c.data.tfds_dir = ''  # '' = TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR)
  c.data.train_split = 'train'
  c.data.eval_split = 'test'
  c.data.batch_size = 128  # global, over all processes and devices
  c.data.eval_batch_size = 500  # rounded up to the mesh's batch shards; padded rows are masked
  c.data.scale = 'zero_one'
  c.data.augment = 'none'
  c.data.shift = 2  # pixels, for augment='shift'; padding, for 'crop_flip'
  c.data.image_size = 0  # > 0: resize + centre-crop to this size (datasets of mixed sizes)
  c.data.download = False  # let TFDS try to download a dataset that is not prepared
  c.data.cache = True  # hold the split in memory (small datasets)
  c.data.read_threads = 2  # grain threads reading batches (in each worker, with data.workers)
  c.data.workers = 0  # grain worker processes making the train batches; 0: none; -1: one per core
  c.data.classes = ()  # keep only these labels (train and eval); () = all
  c.data.per_class = 0  # > 0: the first N train examples of each kept class (file order)
  c.data.clusters = 0  # > 0: labels replaced by K balanced spectral clusters (self-conditioned GAN)
  c.data.synthetic = ml_collections.ConfigDict()
  c.data.synthetic.path = (
    ''  # .npz of generated, labelled images (--mode sample) for the train split
  )
  c.data.synthetic.mode = 'add'  # 'add' to the real train split, or use 'only' them (CAS)
  c.data.synthetic.real_fraction = (
    0.0  # mode=add: repeat the real images to about this share (0: once)
  )

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'adamw'
  c.optim.lr = 1e-3
  c.optim.schedule = 'constant'
  c.optim.warmup_frac = 0.0  # fraction of train.steps (warmup_cosine, onecycle)
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.momentum = 0.9
  c.optim.weight_decay = 0.0
  c.optim.grad_clip = 0.0  # global norm; 0 = off
  # > 1: each step's batch in this many microbatches, one update from their mean gradient (less
  # activation memory; BatchNorm normalises each microbatch: jaxvision/tasks/accumulate.py)
  c.optim.accum_steps = 1

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.log_every = 50
  c.train.eval_every = 500
  c.train.ckpt_every = 500
  c.train.keep_ckpts = 3
  c.train.async_checkpoints = True  # saves overlap the next steps; False: each save blocks
  c.train.progress = True

  c.parallel = 'jit'  # 'jit' (shardings from the mesh) or 'pmap' (data parallel over all devices)
  # XLA:CPU only: who runs the convolutions of the jitted steps: 'ynnpack' (XLA's default) or 'xla'
  # (YNNPACK's fusion off for convolutions; faster for some models, see docs/performance.md)
  c.cpu_convolutions = 'ynnpack'
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1: all devices not used by the other axes
  c.mesh.fsdp = 1  # > 1: the state's large leaves split over this axis (FSDP)
  c.mesh.model = 1  # > 1: tensor parallelism, for models with sharding rules (the ViT)
  return c


def get(config, key: str):
  """config['a']['b'] for key 'a.b'.

  Args:
    config: a ConfigDict (or nested dict).
    key: a dotted key.

  Returns:
    The value (KeyError if a part is missing; see `has`).
  """
  value = config
  for part in key.split('.'):
    value = value[part]
  return value


def has(config, key: str) -> bool:
  """Whether dotted `key` exists in `config`.

  Args:
    config: a ConfigDict (or nested dict).
    key: a dotted key.

  Returns:
    True if every part of `key` is there.
  """
  node = config
  for part in key.split('.'):
    if not hasattr(node, 'keys') or part not in node:
      return False
    node = node[part]
  return True


def choice(config, key: str, allowed) -> None:
  """Checks that config's `key` is one of `allowed`.

  Args:
    config: the experiment config.
    key: a dotted key.
    allowed: the values it may take.

  Raises:
    ConfigError: (one line naming the allowed values) it is not one of them.
  """
  value = get(config, key)
  if value not in allowed:
    raise ConfigError(f'{key}={value!r} is not allowed; use one of: {", ".join(map(str, allowed))}')


# Intervals a numeric key must lie in: (low, high, low included, high included).
AT_LEAST_0 = (0, math.inf, True, False)
ABOVE_0 = (0, math.inf, False, False)
AT_LEAST_1 = (1, math.inf, True, False)
AT_LEAST_MINUS_1 = (-1, math.inf, True, False)
FRACTION = (0, 1, True, False)  # [0, 1)
RANGES = {
  'seed': AT_LEAST_0,
  'data.batch_size': AT_LEAST_1,
  'data.eval_batch_size': AT_LEAST_1,
  'data.shift': AT_LEAST_0,
  'data.image_size': AT_LEAST_0,
  'data.read_threads': AT_LEAST_1,
  'data.workers': AT_LEAST_MINUS_1,
  'data.per_class': AT_LEAST_0,
  'data.clusters': AT_LEAST_0,
  'data.synthetic.real_fraction': FRACTION,
  'optim.lr': ABOVE_0,
  'optim.warmup_frac': FRACTION,
  'optim.b1': FRACTION,
  'optim.b2': FRACTION,
  'optim.momentum': FRACTION,
  'optim.weight_decay': AT_LEAST_0,
  'optim.grad_clip': AT_LEAST_0,
  'optim.accum_steps': AT_LEAST_1,
  'train.steps': AT_LEAST_1,
  'train.log_every': AT_LEAST_1,
  'train.eval_every': AT_LEAST_1,
  'train.ckpt_every': AT_LEAST_1,
  'train.keep_ckpts': AT_LEAST_1,
}
_NOTES = {  # what a value means at a bound, for the error message
  'optim.grad_clip': ' (0: no clipping)',
  'optim.accum_steps': ' (1: no accumulation)',
  'data.per_class': ' (0: every example)',
  'data.clusters': ' (0: the labels)',
  'data.workers': ' (0: no worker processes; -1: one per CPU core)',
}


def _interval(low, high, closed_low, closed_high) -> str:
  """An interval as the message writes it: '>= 1', 'in [0, 1)'."""
  if high == math.inf:
    return f'{">=" if closed_low else ">"} {low:g}'
  return f'in {"[" if closed_low else "("}{low:g}, {high:g}{"]" if closed_high else ")"}'


def check_range(key: str, value, bounds, note: str = '') -> None:
  """Checks that `value` is a number in `bounds`.

  Args:
    key: the dotted key, for the message.
    value: its value.
    bounds: (low, high, low included, high included), e.g. `AT_LEAST_1`.
    note: appended to the message, e.g. ' (0: off)'.

  Raises:
    ConfigError: `value` is not a number (bools and NaN included) or lies outside `bounds`.
  """
  low, high, closed_low, closed_high = bounds
  ok = (
    isinstance(value, (int, float))
    and not isinstance(value, bool)
    and not math.isnan(value)
    and (value >= low if closed_low else value > low)
    and (value <= high if closed_high else value < high)
  )
  if not ok:
    raise ConfigError(f'{key}={value!r} must be {_interval(*bounds)}{note}')


def check_ranges(config, ranges: dict, notes: dict | None = None) -> None:
  """check_range for every key of `ranges` that `config` has.

  Args:
    config: the experiment config.
    ranges: {dotted key: bounds}.
    notes: {dotted key: note} for the messages.

  Raises:
    ConfigError: the first key out of its range.
  """
  for key, bounds in ranges.items():
    if has(config, key):
      check_range(key, get(config, key), bounds, (notes or {}).get(key, ''))


def required(kind=str):
  """A config value that the user must give on the command line (a preset's input path):
  None until set; `validate` names it if it is still missing.

  Args:
    kind: the value's type.

  Returns:
    An ml_collections placeholder of that type.
  """
  return ml_collections.config_dict.placeholder(kind)


def _missing(config, prefix: str = '') -> list[str]:
  """The dotted keys whose value is None (a `required` value not given)."""
  out = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out += _missing(value, f'{prefix}{key}.')
    elif value is None:
      out.append(prefix + key)
  return out


def validate(config) -> None:
  """Checks the shared keys (those of `base()`); needs no data and no devices.

  Args:
    config: an experiment config.

  Raises:
    ConfigError: the first bad value, in one line naming the key and what is allowed.
  """
  missing = _missing(config)
  if missing:
    raise ConfigError(
      f'{missing[0]} is required by this config and not set; give --config.{missing[0]}=...'
    )
  choice(config, 'optim.name', OPTIMIZERS)
  choice(config, 'optim.schedule', SCHEDULES)
  choice(config, 'data.scale', SCALES)
  choice(config, 'data.augment', AUGMENTS)
  check_ranges(config, RANGES, _NOTES)
  check_accum_steps(config)
  if not isinstance(config.data.name, str) or not config.data.name:
    raise ConfigError('data.name must be a TFDS dataset name, e.g. data.name=mnist10k')
  classes = tuple(config.data.classes)
  if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in classes) or len(
    set(classes)
  ) < len(classes):
    raise ConfigError(f'data.classes={classes} must be distinct labels >= 0, e.g. (5, 6, 7, 8, 9)')
  if config.data.clusters and config.data.synthetic.path:
    raise ConfigError(
      f'data.clusters={config.data.clusters} cannot be combined with '
      f'data.synthetic.path; set --config.data.clusters=0'
    )
  choice(config, 'data.synthetic.mode', ('add', 'only'))
  if config.data.synthetic.mode == 'only' and not config.data.synthetic.path:
    raise ConfigError(
      'data.synthetic.mode=only needs data.synthetic.path (an .npz from --mode sample)'
    )
  if config.data.augment == 'inception_crop' and config.data.image_size <= 0:
    raise ConfigError('data.augment=inception_crop needs data.image_size > 0 (e.g. 224)')
  if config.data.augment == 'inception_crop' and (
    config.data.clusters or config.data.synthetic.path
  ):
    raise ConfigError(
      'data.augment=inception_crop crops the train images as they are read, which data.clusters '
      'and data.synthetic.path cannot take; use data.augment=none with them'
    )
  for axis in ('data', 'fsdp', 'model'):
    size = config.mesh[axis]
    if size == 0 or size < -1:
      raise ConfigError(
        f'mesh.{axis}={size} must be a positive axis size or -1 (all remaining devices)'
      )
  choice(config, 'parallel', ('jit', 'pmap'))
  choice(config, 'cpu_convolutions', ('ynnpack', 'xla'))
  choice(config, 'dtype', DTYPES)
  if config.parallel == 'pmap' and (config.mesh.fsdp != 1 or config.mesh.model != 1):
    raise ConfigError(
      f'parallel=pmap is data parallel only, but mesh.fsdp={config.mesh.fsdp}, '
      f'mesh.model={config.mesh.model}; set them to 1 or use parallel=jit'
    )


def check_accum_steps(config) -> None:
  """Checks `optim.accum_steps` against the batch (the mesh's part: `experiment.setup`).

  Args:
    config: an experiment config.

  Raises:
    ConfigError: accum_steps is not an integer, or does not divide data.batch_size.
  """
  k, batch = config.optim.accum_steps, config.data.batch_size
  if isinstance(k, bool) or not isinstance(k, int):
    raise ConfigError(f'optim.accum_steps={k!r} must be an integer >= 1 (1: no accumulation)')
  if batch % k:
    raise ConfigError(
      f'data.batch_size={batch} must be divisible by optim.accum_steps={k} (the microbatches '
      f'of a step are equal)'
    )


SMOKE_EVAL_EXAMPLES = 512


def smoke(c: ml_collections.ConfigDict, batch_size: int = 32) -> ml_collections.ConfigDict:
  """The `smoke` preset's loop settings, shared by every config: 6 steps, 2 evals, 2 saves; the
  evals read the first `SMOKE_EVAL_EXAMPLES` of the eval split (a TFDS slice), in one batch.

  Args:
    c: the config to change (in place; after its data.eval_split is set).
    batch_size: its data.batch_size.

  Returns:
    `c`.
  """
  c.train.steps = 6
  c.train.log_every = 2
  c.train.eval_every = 3
  c.train.ckpt_every = 3
  c.data.batch_size = batch_size
  c.data.eval_split = f'{c.data.eval_split}[:{SMOKE_EVAL_EXAMPLES}]'
  c.data.eval_batch_size = SMOKE_EVAL_EXAMPLES
  return c


def from_file(path: str, preset: str = '') -> ml_collections.ConfigDict:
  """`get_config(preset)` of a config file: for configs that derive from another one, and for the
  command line's `--config path[:preset]`.

  Args:
    path: the config file.
    preset: the preset passed to its `get_config`; '' calls `get_config()`, the file's default.

  Returns:
    The config it makes.
  """
  spec = importlib.util.spec_from_file_location(f'_config_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset) if preset else module.get_config()


def merge_known(config: ml_collections.ConfigDict, values: dict) -> ml_collections.ConfigDict:
  """`config` with the values of `values` (a run.json's config) at the keys `config` has; keys
  that only an older or newer jaxvision knew are left out.

  Args:
    config: the config to update (in place), e.g. `tasks.base_config(task)`.
    values: a nested dict; lists become tuples.

  Returns:
    `config`.
  """
  for key, value in values.items():
    if key not in config:
      continue
    if isinstance(config[key], ml_collections.ConfigDict) and isinstance(value, dict):
      merge_known(config[key], value)
    else:
      config[key] = tuple(value) if isinstance(value, list) else value
  return config
