"""Bad commands as a tired user types them: each gets one line on stderr, nothing on stdout, its
documented exit code, within 10 s, and leaves an existing workdir byte-identical (a new one is
not created)."""

import os
import shutil

import pytest

from conftest import run_py, tree_snapshot

TRAINED = 'runs/trained'  # a finished configs/cnn.py:smoke run, made once for the table
NEW = 'runs/new'  # a workdir that does not exist

# (command after `python run.py`, workdir, exit code, a piece of the one line)
CASES = [
  (['--config', 'configs/nope.py'], NEW, 2, '--config configs/nope.py: no such file; configs/ has'),
  (
    ['--config', 'configs/cnn.py:nosuch'],
    NEW,
    2,
    "configs/cnn.py has presets smoke, domain and cifar10, not 'nosuch'",
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.nope=1'],
    TRAINED,
    2,
    "unknown config key 'nope'",
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.optim.lr=abc'],
    TRAINED,
    2,
    "--config.optim.lr=abc: could not convert string to float: 'abc'",
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.optim.lr=-0.01'],
    TRAINED,
    2,
    'optim.lr=-0.01 must be > 0',
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.optim.grad_clip=-1'],
    TRAINED,
    2,
    'optim.grad_clip=-1.0 must be >= 0 (0: no clipping)',
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.optim.accum_steps=0'],
    NEW,
    2,
    'optim.accum_steps=0 must be >= 1 (1: no accumulation)',
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.optim.accum_steps=3'],
    TRAINED,
    2,
    'data.batch_size=32 must be divisible by optim.accum_steps=3',
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.optim.accum_steps=8'],  # 4 rows: not 8 shards
    NEW,
    2,
    'data.batch_size=32 must be divisible by optim.accum_steps=8 x the 8 batch shards of the '
    'mesh; pick a multiple of 64',
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.optim.warmup_frac=1.5'],
    TRAINED,
    2,
    'optim.warmup_frac=1.5 must be in [0, 1)',
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.train.steps=0'],
    TRAINED,
    2,
    'train.steps=0 must be >= 1',
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.train.keep_ckpts=0'],
    TRAINED,
    2,
    'train.keep_ckpts=0 must be >= 1',
  ),
  (['--config', 'configs/cnn.py:smoke', '--config.seed=-1'], TRAINED, 2, 'seed=-1 must be >= 0'),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.dtype=float16'],
    TRAINED,
    2,
    "dtype='float16' is not allowed; use one of: float32, bfloat16",
  ),
  (
    ['--config', 'configs/dcgan.py:smoke', '--config.dtype=bf16'],
    NEW,
    2,
    "dtype='bf16' is not allowed; use one of: float32, bfloat16",
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.dtype=bfloat16'],
    TRAINED,
    2,
    'holds a run of another config (dtype: ',
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.model.dtype=bfloat16'],
    NEW,
    2,
    "--config.model.dtype: unknown config key 'dtype'",
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.data.per_class=-5'],
    TRAINED,
    2,
    'data.per_class=-5 must be >= 0 (0: every example)',
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.data.shift=-1'],
    TRAINED,
    2,
    'data.shift=-1 must be >= 0',
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.loss.label_smoothing=1.5'],
    TRAINED,
    2,
    'loss.label_smoothing=1.5 must be in [0, 1)',
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.data.batch_size=12'],
    TRAINED,
    2,
    'data.batch_size=12 must be divisible by the 8 batch shards of the mesh',
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.mesh.data=3'],
    TRAINED,
    2,
    'needs 3 devices, there are 8',
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.parallel=pmap', '--config.mesh.fsdp=2'],
    TRAINED,
    2,
    'parallel=pmap is data parallel only',
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.mesh.model=2'],
    TRAINED,
    2,
    'mesh.model=2 splits only the models with tensor-parallel rules (model.name=vit), '
    "not model 'cnn'",
  ),
  (
    ['--config', 'configs/vit.py:smoke', '--config.mesh.model=4'],  # 2 heads
    NEW,
    2,
    'mesh.model=4 does not divide axis 0 (of size 2) of '
    'params/block1/MultiHeadDotProductAttention_0/key/bias',
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.data.name=no_such_set'],
    NEW,
    2,
    "data.name='no_such_set' is not a TFDS dataset",
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.data.classes=(11,)'],
    NEW,
    2,
    'data.classes has [11], outside the 10 classes of mnist10k',
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.model.num_classes=5'],
    NEW,
    2,
    'model.num_classes=5 but the labels of mnist10k go up to 9; set --config.model.num_classes=10',
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.model.features=(8, 0)'],
    NEW,
    2,
    'model.features=(8, 0) must be >= 1 (each)',
  ),
  (
    ['--config', 'configs/vit.py:smoke', '--config.model.dropout=1.5'],
    NEW,
    2,
    'model.dropout=1.5 must be in [0, 1)',
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.model.variant=big'],
    NEW,
    2,
    "model.variant='big'",
  ),
  (
    [
      '--config',
      'configs/cnn.py:smoke',
      '--config.model.hidden=64',
      '--config.allow_config_change=True',
    ],
    TRAINED,
    2,
    'do not fit this config: params/BatchNorm_2/bias is float32[32] there, float32[64] here',
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.model.hidden=64'],
    TRAINED,
    2,
    'holds a run of another config (model.hidden: 32 -> 64)',
  ),
  (['--config', 'configs/vit.py:smoke'], TRAINED, 2, 'holds a run of another config'),
  (
    ['--config', 'configs/cnn.py:smoke', '--config.init_from.path=runs/nowhere'],
    NEW,
    2,
    'does not exist; give a workdir of a finished run',
  ),
  (
    ['--config', 'configs/cas.py:smoke', '--config.data.synthetic.path=missing.npz'],
    NEW,
    2,
    "data.synthetic.path='missing.npz' cannot be read",
  ),
  (
    ['--config', 'configs/cas.py:smoke'],
    NEW,
    2,
    'data.synthetic.path is required by this config and not set',
  ),
  (
    ['--config', 'configs/vae.py:smoke', '--config.eval.fd_samples=1'],
    NEW,
    2,
    'eval.fd_samples=1 must be 0 (no FD/KID) or >= 2',
  ),
  (
    ['--config', 'configs/vae.py:smoke', '--config.eval.fd_samples=-3'],
    NEW,
    2,
    'eval.fd_samples=-3 must be >= 0',
  ),
  (
    ['--config', 'configs/dcgan.py:smoke', '--config.gan.g_lr=-1'],
    NEW,
    2,
    'gan.g_lr=-1.0 must be >= 0',
  ),
  (
    ['--config', 'configs/dcgan.py:smoke', '--config.gan.d_lr=-0.001'],
    NEW,
    2,
    'gan.d_lr=-0.001 must be >= 0',
  ),
  (
    ['--config', 'configs/diffusion.py:smoke', '--config.diffusion.objective=flow'],
    NEW,
    2,
    "sample.sampler='ddpm' is not allowed; use one of: euler, heun",
  ),
  (
    ['--config', 'configs/diffusion.py:smoke', '--config.model.name=dcgan'],
    NEW,
    2,
    "model.attention is not a field of model 'dcgan'",
  ),
  (
    ['--config', 'configs/diffusion.py:smoke', '--config.data.scale=zero_one'],
    NEW,
    2,
    'task diffusion models images in [-1, 1] and needs data.scale=minus_one_one',
  ),
  (
    ['--config', 'configs/diffusion.py:smoke', '--config.diffusion.schedule=cosin'],
    NEW,
    2,
    "diffusion.schedule='cosin' is not allowed; use one of: cosine, linear",
  ),
  (
    ['--config', 'configs/diffusion.py:smoke', '--config.sample.guidance=-1'],
    NEW,
    2,
    'sample.guidance=-1.0 must be >= 0',
  ),
  (
    ['--config', 'configs/diffusion.py:smoke', '--config.sample.guidance=2'],
    NEW,
    2,
    'sample.guidance=2.0 needs a conditional model',
  ),
  (
    ['--config', 'configs/diffusion.py:smoke', '--config.sample.steps=0'],
    NEW,
    2,
    'sample.steps=0 must be >= 1',
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--mode', 'sample'],
    TRAINED,
    2,
    "task 'classification' does not generate images",
  ),
  (
    ['--config', 'configs/vae.py:smoke', '--mode', 'explain'],
    NEW,
    2,
    '--mode explain explains classifiers',
  ),
  (['--config', 'configs/cnn.py:smoke', '--mode', 'eval'], NEW, 2, 'no checkpoint in'),
  (['--config', 'configs/vae.py:smoke', '--mode', 'sample'], NEW, 2, 'no checkpoint in'),
  (
    ['--config', 'configs/cnn.py:smoke', '--mode', 'nosuch'],
    TRAINED,
    2,
    'flag --mode=nosuch: value should be one of <train|eval|sample|explain>',
  ),
  (
    ['--config', 'configs/cnn.py:smoke', 'steps=100'],
    TRAINED,
    2,
    "unexpected argument 'steps=100'",
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--workdri=x'],
    TRAINED,
    2,
    "Unknown command line flag 'workdri'",
  ),
  (
    ['--config', 'configs/cnn.py:smoke', '--num_processes=2'],
    TRAINED,
    2,
    '--coordinator_address, --num_processes and --process_id go together',
  ),
  (
    [
      '--config',
      'configs/cnn.py:smoke',
      '--coordinator_address=127.0.0.1:1',
      '--num_processes=2',
      '--process_id=2',
    ],
    TRAINED,
    2,
    '--process_id=2 must be in [0, --num_processes=2)',
  ),
  (['--config', 'configs/cnn.py:smoke'], 'run.py', 2, 'run.py is a file, not a directory'),
  (['--config', 'configs/cnn.py:smoke'], 'run.py/sub', 2, 'run.py is a file, not a directory'),
  (
    ['--config', 'configs/cnn.py:smoke'],
    '/sys/jaxvision_run',
    4,
    'cannot write to --workdir /sys/jaxvision_run',
  ),
]


@pytest.fixture(scope='module')
def root(clone_root, tfds_dir, tmp_path_factory):
  """A clone root of its own whose runs/trained is a finished configs/cnn.py:smoke run."""
  root = tmp_path_factory.mktemp('bad_commands')
  shutil.copy(os.path.join(clone_root, 'run.py'), root)
  shutil.copytree(os.path.join(clone_root, 'configs'), root / 'configs')
  proc, _ = run_py(
    '--config', 'configs/cnn.py:smoke', '--workdir', TRAINED, cwd=root, tfds_dir=tfds_dir
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  return root


def test_the_table_has_at_least_25_commands():
  assert len(CASES) >= 25


@pytest.mark.parametrize(
  'args, workdir, code, message',
  CASES,
  ids=[' '.join(c[0][2:] or c[0][:2]) + f' @{c[1]}' for c in CASES],
)
def test_a_bad_command_gets_one_line_and_its_exit_code_and_loses_nothing(
  root, tfds_dir, args, workdir, code, message
):
  path = workdir if os.path.isabs(workdir) else os.path.join(root, workdir)
  before = tree_snapshot(path) if os.path.isdir(path) else None
  proc, seconds = run_py(*args, '--workdir', workdir, cwd=root, tfds_dir=tfds_dir)
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode == code, proc.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], lines
  assert proc.stdout == ''
  assert seconds < 10, seconds
  if before is not None:
    assert tree_snapshot(path) == before  # not a byte, not an mtime changed
  elif os.path.isabs(workdir) or workdir == NEW:
    assert not os.path.exists(path)  # not even created
