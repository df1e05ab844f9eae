"""Shared config keys, defaults and validation.

Every experiment config (`configs/*.py`) starts from `base()` and changes what
it needs, so commands and tests can rely on the same keys everywhere. The
config is validated by `validate()` before any compute: a bad value raises
`ConfigError` with one line naming the key and what is allowed.
"""
import ml_collections

OPTIMIZERS = ('adam', 'adamw', 'sgd', 'momentum')
SCHEDULES = ('constant', 'cosine', 'warmup_cosine', 'onecycle')
SCALES = ('zero_one', 'minus_one_one')
AUGMENTS = ('none', 'shift', 'crop_flip')
MODES = ('train', 'eval')


class ConfigError(ValueError):
  """A config value that cannot work; the message is one line with the fix."""


def base() -> ml_collections.ConfigDict:
  """The keys every config shares (see shared DESIGN.md, 'Config conventions')."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = 'classification'
  c.allow_config_change = False  # resume a workdir written with another config

  c.model = ml_collections.ConfigDict()
  c.model.name = 'cnn'

  c.data = ml_collections.ConfigDict()
  c.data.name = 'mnist10k'
  c.data.tfds_dir = ''  # '' = TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR)
  c.data.train_split = 'train'
  c.data.eval_split = 'test'
  c.data.batch_size = 128  # global, over all processes and devices
  c.data.eval_batch_size = 500
  c.data.scale = 'zero_one'
  c.data.augment = 'none'
  c.data.shift = 2  # pixels, for augment='shift'; padding, for 'crop_flip'
  c.data.download = False  # let TFDS try to download a dataset that is not prepared
  c.data.cache = True  # hold the split in memory (small datasets)
  c.data.read_threads = 2

  c.loss = ml_collections.ConfigDict()
  c.loss.label_smoothing = 0.0
  c.loss.beta = 1.0  # vae: weight of the KL term
  c.loss.kl_warmup_steps = 0  # vae: KL weight ramps from 0 to beta over these steps

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

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.log_every = 50
  c.train.eval_every = 500
  c.train.ckpt_every = 500
  c.train.keep_ckpts = 3
  c.train.progress = True

  c.eval = ml_collections.ConfigDict()
  c.eval.iwae_k = 0  # vae: importance samples of eval/nll_iwae at the final eval; 0 = off
  c.eval.iwae_chunk = 50  # samples per image decoded at once; must divide eval.iwae_k

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1: all devices not used by the other axes
  c.mesh.fsdp = 1
  c.mesh.model = 1
  return c


def _choice(config, key: str, allowed) -> None:
  value = config
  for part in key.split('.'):
    value = value[part]
  if value not in allowed:
    raise ConfigError(f'{key}={value!r} is not allowed; use one of: {", ".join(map(str, allowed))}')


def _positive(config, key: str) -> None:
  value = config
  for part in key.split('.'):
    value = value[part]
  if value <= 0:
    raise ConfigError(f'{key}={value!r} must be > 0')


def validate(config) -> None:
  """Checks that need no data and no devices; raises ConfigError."""
  from jaxvision import models, tasks  # registries; imported late to keep this module light
  _choice(config, 'task', sorted(tasks.TASKS))
  _choice(config, 'model.name', sorted(models.MODELS))
  models.check_kwargs(config.model)
  _choice(config, 'optim.name', OPTIMIZERS)
  _choice(config, 'optim.schedule', SCHEDULES)
  _choice(config, 'data.scale', SCALES)
  _choice(config, 'data.augment', AUGMENTS)
  for key in ('data.batch_size', 'data.eval_batch_size', 'optim.lr', 'train.steps',
              'train.log_every', 'train.eval_every', 'train.ckpt_every', 'train.keep_ckpts'):
    _positive(config, key)
  if not 0.0 <= config.optim.warmup_frac < 1.0:
    raise ConfigError(f'optim.warmup_frac={config.optim.warmup_frac} must be in [0, 1)')
  if not isinstance(config.data.name, str) or not config.data.name:
    raise ConfigError('data.name must be a TFDS dataset name, e.g. data.name=mnist10k')
  if config.eval.iwae_k < 0 or config.eval.iwae_chunk <= 0:
    raise ConfigError(f'eval.iwae_k={config.eval.iwae_k} must be >= 0 and '
                      f'eval.iwae_chunk={config.eval.iwae_chunk} > 0')
  if config.eval.iwae_k % config.eval.iwae_chunk:
    raise ConfigError(f'eval.iwae_chunk={config.eval.iwae_chunk} must divide '
                      f'eval.iwae_k={config.eval.iwae_k}')
  task_validate = getattr(tasks.get(config.task), 'validate', None)
  if task_validate is not None:
    task_validate(config)
  for axis in ('data', 'fsdp', 'model'):
    size = config.mesh[axis]
    if size == 0 or size < -1:
      raise ConfigError(f'mesh.{axis}={size} must be a positive axis size or -1 (all remaining devices)')
