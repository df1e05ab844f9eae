"""Shared config keys, defaults and validation.

Every experiment config (`configs/*.py`) starts from `base()` and changes what
it needs, so commands and tests can rely on the same keys everywhere. The
config is validated by `validate()` before any compute: a bad value raises
`ConfigError` with one line naming the key and what is allowed.
"""
import math

import ml_collections

from jaxvision.errors import ConfigError

OPTIMIZERS = ('adam', 'adamw', 'sgd', 'momentum')
SCHEDULES = ('constant', 'cosine', 'warmup_cosine', 'onecycle')
SCALES = ('zero_one', 'minus_one_one', 'imagenet')
AUGMENTS = ('none', 'shift', 'crop_flip', 'inception_crop')
MODES = ('train', 'eval', 'sample', 'explain')


def base() -> ml_collections.ConfigDict:
  """The keys every config shares (see shared DESIGN.md, 'Config conventions')."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = 'classification'
  c.allow_config_change = False  # resume a workdir written with another config
  c.debug_nans = False  # jax_debug_nans: re-run a NaN-producing op un-jitted to name it (slow)

  c.model = ml_collections.ConfigDict()
  c.model.name = 'cnn'

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
  c.data.eval_batch_size = 500
  c.data.scale = 'zero_one'
  c.data.augment = 'none'
  c.data.shift = 2  # pixels, for augment='shift'; padding, for 'crop_flip'
  c.data.image_size = 0  # > 0: resize + centre-crop to this size (datasets of mixed sizes)
  c.data.download = False  # let TFDS try to download a dataset that is not prepared
  c.data.cache = True  # hold the split in memory (small datasets)
  c.data.read_threads = 2
  c.data.classes = ()  # keep only these labels (train and eval); () = all
  c.data.per_class = 0  # > 0: the first N train examples of each kept class (file order)
  c.data.clusters = 0  # > 0: labels replaced by K balanced spectral clusters (self-conditioned GAN)
  c.data.max_len = 256  # text datasets: tokens per example
  c.data.vocab_size = 20000  # text datasets: words of the train split kept (+ pad and unknown)
  c.data.seq_len = 4  # digit_sequences: digits per sequence
  c.data.seq_train_count = 40000  # digit_sequences: train sequences (an index table; cheap)
  c.data.seq_test_count = 2000
  c.data.synthetic = ml_collections.ConfigDict()
  c.data.synthetic.path = ''  # .npz of generated, labelled images (--mode sample) for the train split
  c.data.synthetic.mode = 'add'  # 'add' to the real train split, or use 'only' them (CAS)
  c.data.synthetic.real_fraction = 0.0  # mode=add: repeat the real images to about this share (0: once)

  c.loss = ml_collections.ConfigDict()
  c.loss.label_smoothing = 0.0
  c.loss.beta = 1.0  # vae: weight of the KL term
  c.loss.kl_warmup_steps = 0  # vae: KL weight ramps from 0 to beta over these steps
  c.loss.likelihood = 'bernoulli'  # vae: 'bernoulli' (binarised digits) | 'logistic' (8-bit colour)

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
  c.eval.fd_samples = 0  # generative tasks: samples for eval/fd and eval/kid at every eval; 0 = off
  c.eval.inception_weights = ''  # with fd_samples: an .npz of Inception-v3 variables -> eval/fid

  c.explain = ml_collections.ConfigDict()
  c.explain.n = 16  # --mode explain: test images explained
  c.explain.steps = 512  # integrated-gradients intervals (512: completeness error < 1 % on the CNN)

  c.sample = ml_collections.ConfigDict()
  c.sample.n = 64  # --mode sample: how many images to write

  c.gan = ml_collections.ConfigDict()
  c.gan.loss = 'bce'  # 'bce' (minimax D, non-saturating G) or 'hinge'
  c.gan.d_steps = 1  # discriminator updates per generator update
  c.gan.ema_decay = 0.999  # of the generator params used for samples and metrics
  c.gan.g_lr = 0.0  # 0 = optim.lr
  c.gan.d_lr = 0.0  # 0 = optim.lr
  c.gan.info_weight = 1.0  # InfoGAN (model.info_codes > 0): weight of the code's cross-entropy
  c.gan.r1_gamma = 0.0  # R1 penalty on D: gamma / 2 x E ||grad_x D(x_real)||^2; 0 = off

  c.parallel = 'jit'  # 'jit' (shardings from the mesh) or 'pmap' (data parallel over all devices)
  # XLA:CPU only: who runs the convolutions of the jitted steps: 'ynnpack' (XLA's default) or 'xla'
  # (YNNPACK fusion off for convolutions; configs/resnet.py and dcgan.py set it: 1.21x and 1.11x on
  # their steps, see benchmarks/README.md)
  c.cpu_convolutions = 'ynnpack'
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1: all devices not used by the other axes
  c.mesh.fsdp = 1
  c.mesh.model = 1
  return c


def _get(config, key: str):
  value = config
  for part in key.split('.'):
    value = value[part]
  return value


def _choice(config, key: str, allowed) -> None:
  value = _get(config, key)
  if value not in allowed:
    raise ConfigError(f'{key}={value!r} is not allowed; use one of: {", ".join(map(str, allowed))}')


# Numeric keys and the interval each must lie in: (low, high, low included, high included).
_AT_LEAST_0 = (0, math.inf, True, False)
_ABOVE_0 = (0, math.inf, False, False)
_AT_LEAST_1 = (1, math.inf, True, False)
_FRACTION = (0, 1, True, False)  # [0, 1)
RANGES = {
    'seed': _AT_LEAST_0,
    'data.batch_size': _AT_LEAST_1, 'data.eval_batch_size': _AT_LEAST_1,
    'data.shift': _AT_LEAST_0, 'data.image_size': _AT_LEAST_0, 'data.read_threads': _AT_LEAST_1,
    'data.per_class': _AT_LEAST_0, 'data.clusters': _AT_LEAST_0, 'data.max_len': _AT_LEAST_1,
    'data.vocab_size': (3, math.inf, True, False), 'data.seq_len': _AT_LEAST_1,
    'data.seq_train_count': _AT_LEAST_1, 'data.seq_test_count': _AT_LEAST_1,
    'data.synthetic.real_fraction': _FRACTION,
    'loss.label_smoothing': _FRACTION, 'loss.beta': _AT_LEAST_0, 'loss.kl_warmup_steps': _AT_LEAST_0,
    'optim.lr': _ABOVE_0, 'optim.warmup_frac': _FRACTION, 'optim.b1': _FRACTION,
    'optim.b2': _FRACTION, 'optim.momentum': _FRACTION, 'optim.weight_decay': _AT_LEAST_0,
    'optim.grad_clip': _AT_LEAST_0,
    'train.steps': _AT_LEAST_1, 'train.log_every': _AT_LEAST_1, 'train.eval_every': _AT_LEAST_1,
    'train.ckpt_every': _AT_LEAST_1, 'train.keep_ckpts': _AT_LEAST_1,
    'eval.iwae_k': _AT_LEAST_0, 'eval.iwae_chunk': _AT_LEAST_1, 'eval.fd_samples': _AT_LEAST_0,
    'explain.n': _AT_LEAST_1, 'explain.steps': _AT_LEAST_1, 'sample.n': _AT_LEAST_1,
    'gan.d_steps': _AT_LEAST_1, 'gan.ema_decay': _FRACTION, 'gan.g_lr': _AT_LEAST_0,
    'gan.d_lr': _AT_LEAST_0, 'gan.info_weight': _AT_LEAST_0, 'gan.r1_gamma': _AT_LEAST_0,
}
_NOTES = {  # what a value means at a bound, for the error message
    'optim.grad_clip': ' (0: no clipping)', 'gan.g_lr': ' (0: optim.lr)', 'gan.d_lr': ' (0: optim.lr)',
    'eval.fd_samples': ' (0: no FD/KID)', 'data.per_class': ' (0: every example)',
    'data.clusters': ' (0: the labels)', 'eval.iwae_k': ' (0: no IWAE bound)',
}


def _interval(low, high, closed_low, closed_high) -> str:
  if high == math.inf:
    return f'{">=" if closed_low else ">"} {low:g}'
  return f'in {"[" if closed_low else "("}{low:g}, {high:g}{"]" if closed_high else ")"}'


def check_range(key: str, value, bounds) -> None:
  """ConfigError unless `value` is a number in `bounds` (see RANGES)."""
  low, high, closed_low, closed_high = bounds
  ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
        and (value >= low if closed_low else value > low)
        and (value <= high if closed_high else value < high))
  if not ok:
    raise ConfigError(f'{key}={value!r} must be {_interval(*bounds)}{_NOTES.get(key, "")}')


def required(kind=str):
  """A config value that the user must give on the command line (a preset's input path):
  None until set; `validate` names it if it is still missing."""
  return ml_collections.config_dict.placeholder(kind)


def _missing(config, prefix: str = '') -> list[str]:
  out = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out += _missing(value, f'{prefix}{key}.')
    elif value is None:
      out.append(prefix + key)
  return out


def validate(config) -> None:
  """Checks every value that needs no data and no devices; raises ConfigError (one line)."""
  from jaxvision import models, tasks  # registries; imported late to keep this module light
  missing = _missing(config)
  if missing:
    raise ConfigError(f'{missing[0]} is required by this config and not set; give --config.{missing[0]}=...')
  _choice(config, 'task', sorted(tasks.TASKS))
  _choice(config, 'model.name', sorted(models.MODELS))
  models.check_kwargs(config.model)
  _choice(config, 'optim.name', OPTIMIZERS)
  _choice(config, 'optim.schedule', SCHEDULES)
  _choice(config, 'data.scale', SCALES)
  _choice(config, 'data.augment', AUGMENTS)
  for key, bounds in RANGES.items():
    if _has(config, key):
      check_range(key, _get(config, key), bounds)
  if config.eval.fd_samples == 1:
    raise ConfigError('eval.fd_samples=1 must be 0 (no FD/KID) or >= 2: a covariance needs two samples')
  if not isinstance(config.data.name, str) or not config.data.name:
    raise ConfigError('data.name must be a TFDS dataset name, e.g. data.name=mnist10k')
  classes = tuple(config.data.classes)
  if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in classes) or len(set(classes)) < len(classes):
    raise ConfigError(f'data.classes={classes} must be distinct labels >= 0, e.g. (5, 6, 7, 8, 9)')
  if config.data.clusters and config.data.synthetic.path:
    raise ConfigError(f'data.clusters={config.data.clusters} cannot be combined with '
                      f'data.synthetic.path; set --config.data.clusters=0')
  _choice(config, 'data.synthetic.mode', ('add', 'only'))
  if config.data.synthetic.mode == 'only' and not config.data.synthetic.path:
    raise ConfigError('data.synthetic.mode=only needs data.synthetic.path (an .npz from --mode sample)')
  if config.data.augment == 'inception_crop' and config.data.image_size <= 0:
    raise ConfigError('data.augment=inception_crop needs data.image_size > 0 (e.g. 224)')
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
  _choice(config, 'parallel', ('jit', 'pmap'))
  _choice(config, 'cpu_convolutions', ('ynnpack', 'xla'))
  if config.parallel == 'pmap' and (config.mesh.fsdp != 1 or config.mesh.model != 1):
    raise ConfigError(f'parallel=pmap is data parallel only, but mesh.fsdp={config.mesh.fsdp}, '
                      f'mesh.model={config.mesh.model}; set them to 1 or use parallel=jit')


def _has(config, key: str) -> bool:
  node = config
  for part in key.split('.'):
    if not hasattr(node, 'keys') or part not in node:
      return False
    node = node[part]
  return True


def smoke(c: ml_collections.ConfigDict, batch_size: int = 32) -> ml_collections.ConfigDict:
  """The `smoke` preset's loop settings, shared by every config: 6 steps, 2 evals, 2 saves."""
  c.train.steps = 6
  c.train.log_every = 2
  c.train.eval_every = 3
  c.train.ckpt_every = 3
  c.data.batch_size = batch_size
  c.data.eval_batch_size = 1000
  return c


def from_file(path: str, preset: str = '') -> ml_collections.ConfigDict:
  """`get_config(preset)` of a config file, for configs that derive from another one."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(f'_config_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)
