"""FID as pytorch-fid computes it: the weights converter, Inception features and FID against
pytorch-fid 0.3 on the same uint8 images, and the streaming statistics and their .npz files.

pytorch-fid downloads its weights, which cannot be had here: `load_state_dict_from_url` is
patched to return seeded random weights (He-normal convs, randomised BatchNorm), which go through
`torch.save` -> `python -m jaxvision.pretrained.inception` -> `InceptionFeatures` as the real
file would. The parity tests are skipped without torch, torchvision and pytorch-fid (the bench
extra); the statistics tests need numpy alone.
"""

import os
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from conftest import ROOT
from jaxvision import config as config_lib
from jaxvision.data import pipeline
from jaxvision.evaluate import fid, generative
from jaxvision.models import inception as inception_model
from jaxvision.pretrained import inception as convert_lib

N_SET = 64  # images per FID set: two sets of 64 (~5-10 s a network on 2 idle cores)
# scipy's sqrtm of a 2048x2048 matrix (pytorch-fid's FID) takes ~50 s on 2 cores: FID is compared
# on every 4th feature (d = 512, the same code) unless JAXVISION_FID_FULL=1 asks for all 2048.
FID_DIMS = slice(None) if os.environ.get('JAXVISION_FID_FULL') == '1' else slice(None, None, 4)
# The `peers` fixture (both networks on three image sets, ~90 s on 2 cores) is built once per
# worker: the module's tests run on one worker so that it is built once.
pytestmark = pytest.mark.xdist_group('fid')


def _random_state_dict(torch, template: dict, seed: int = 0) -> dict:
  """Seeded weights of the shapes of `template` that keep activations O(1) through the net."""
  g = torch.Generator().manual_seed(seed)
  out = {}
  for k, v in template.items():
    if k.endswith('num_batches_tracked'):
      out[k] = torch.zeros_like(v)
    elif v.ndim == 4:  # He-normal: E[x^2] is kept by conv + ReLU
      out[k] = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
    elif k.endswith(('bn.weight', 'bn.running_var')):  # positive
      out[k] = 0.8 + 0.4 * torch.rand(v.shape, generator=g)
    elif k.endswith(('bn.bias', 'bn.running_mean')):
      out[k] = 0.1 * torch.randn(v.shape, generator=g)
    else:  # fc: not part of the features, dropped by the converter
      out[k] = 0.01 * torch.randn(v.shape, generator=g)
  return out


def _blobs(rng, n: int, size: int, channels: int) -> np.ndarray:
  """uint8[n, size, size, channels] images of smooth random structure (not white noise)."""
  coarse = rng.uniform(0, 1, (n, 6, 6, channels)).astype(np.float32)
  up = np.kron(coarse, np.ones((1, -(-size // 6), -(-size // 6), 1), np.float32))[:, :size, :size]
  noise = rng.normal(0, 0.08, up.shape)
  return np.clip((up + noise) * 255, 0, 255).astype(np.uint8)


def _digits(rng, n: int) -> np.ndarray:
  """uint8[n, 28, 28, 1] stroke images: a few thick random line segments on black."""
  yy, xx = np.mgrid[:28, :28].astype(np.float32)
  out = np.zeros((n, 28, 28), np.float32)
  for i in range(n):
    for _ in range(rng.integers(2, 5)):
      (y0, x0), (y1, x1) = rng.uniform(4, 24, (2, 2))
      t = np.clip(
        ((yy - y0) * (y1 - y0) + (xx - x0) * (x1 - x0)) / ((y1 - y0) ** 2 + (x1 - x0) ** 2 + 1e-6),
        0,
        1,
      )
      d = np.hypot(yy - (y0 + t * (y1 - y0)), xx - (x0 + t * (x1 - x0)))
      out[i] = np.maximum(out[i], np.clip(2.0 - d, 0, 1))
  return (out[..., None] * 255).astype(np.uint8)


def _split(images: np.ndarray):
  """A `Split`-like reader of uint8 images."""
  return types.SimpleNamespace(
    size=len(images), read=lambda idx: {'image': images[idx]}, name='test', split='test'
  )


@pytest.fixture(scope='module')
def peers(tmp_path_factory):
  """pytorch-fid's InceptionV3([3]) and jaxvision's InceptionFeatures on the same random
  weights (through the converter's command), and the features of both on three image sets."""
  from torch_peers import import_torchvision

  import_torchvision()
  torch = pytest.importorskip('torch')
  pfi = pytest.importorskip('pytorch_fid.inception')
  fid_score = pytest.importorskip('pytorch_fid.fid_score')
  template = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None).state_dict()
  state_dict = _random_state_dict(torch, template)
  tmp = tmp_path_factory.mktemp('fid')
  pth, npz = str(tmp / 'pt_inception-random.pth'), str(tmp / 'inception_fid.npz')
  torch.save(state_dict, pth)
  assert convert_lib.main([pth, npz]) == 0  # the documented command
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(pfi, 'load_state_dict_from_url', lambda *a, **k: state_dict)
    net = pfi.InceptionV3([3]).eval()  # pytorch-fid's defaults: resize to 299, 2x - 1
    features = fid.InceptionFeatures(npz, batch=8)
    rng = np.random.default_rng(0)
    sets = {
      'rgb64': _blobs(rng, N_SET, 64, 3),  # upscaled
      'digits28': _digits(rng, N_SET),  # grayscale, upscaled
      'rgb320': _blobs(rng, 8, 320, 3),  # downscaled
    }

    def torch_features(images):  # as pytorch-fid's ImagePathDataset: RGB, ToTensor (x / 255)
      rgb = np.broadcast_to(images, (*images.shape[:3], 3)).transpose(0, 3, 1, 2)
      out = []
      with torch.no_grad():
        for start in range(0, len(rgb), 8):  # CPU torch is slower on bigger batches
          x = torch.from_numpy(rgb[start : start + 8].astype(np.float32) / 255.0)
          out.append(net(x)[0].squeeze(-1).squeeze(-1).numpy().astype(np.float64))
      return np.concatenate(out)

    timed = lambda fn, images: (time.perf_counter(), fn(images), time.perf_counter())
    features(sets['rgb64'][:8].astype(np.float32) / 255.0)  # compiled before the clock
    ours, theirs, seconds = {}, {}, {'jax': 0.0, 'torch': 0.0}
    for k, v in sets.items():
      t0, ours[k], t1 = timed(features, v.astype(np.float32) / 255.0)
      t2, theirs[k], t3 = timed(torch_features, v)
      seconds['jax'] += t1 - t0
      seconds['torch'] += t3 - t2
    n = sum(len(v) for v in sets.values())
    print(
      f'\nseconds per image: jaxvision {seconds["jax"] / n:.3f}, pytorch-fid '
      f'{seconds["torch"] / n:.3f} ({n} images)'
    )
    yield types.SimpleNamespace(
      torch=torch,
      fid_score=fid_score,
      net=net,
      state_dict=state_dict,
      features=features,
      npz=npz,
      tmp=tmp,
      sets=sets,
      torch_features=theirs,
      jax_features=ours,
    )


def _rel(a, b) -> float:
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize('name', ['rgb64', 'digits28', 'rgb320'])
def test_features_equal_pytorch_fid(peers, name):
  """The 2048-d pool features of pytorch-fid's weights, converted, equal pytorch-fid's within
  1e-4 of their largest value: upscaled RGB, grayscale repeated to RGB, and a downscale (no
  antialiasing, as F.interpolate); resize and 2x - 1 included."""
  ours, theirs = peers.jax_features[name], peers.torch_features[name]
  assert ours.shape == theirs.shape == (len(peers.sets[name]), 2048)
  assert np.std(theirs, axis=0).mean() > 1e-2 * np.abs(theirs).mean()  # features vary by image
  print(f'{name}: max |diff| / max |feature| = {_rel(ours, theirs):.2e}')
  assert _rel(ours, theirs) < 1e-4


def test_preprocess_is_torch_bilinear_without_antialiasing(peers):
  """jax.image.resize's default (antialias=True) would differ from pytorch-fid when
  downscaling 320 -> 299; `preprocess` does not, and equals F.interpolate."""
  torch = peers.torch
  x = peers.sets['rgb320'][:2].astype(np.float32) / 255.0
  ref = torch.nn.functional.interpolate(
    torch.from_numpy(x.transpose(0, 3, 1, 2)), size=(299, 299), mode='bilinear', align_corners=False
  )
  ref = 2 * ref.numpy().transpose(0, 2, 3, 1) - 1
  ours = np.asarray(inception_model.preprocess(x))
  np.testing.assert_allclose(ours, ref, atol=1e-5)
  import jax

  blurred = 2 * np.asarray(jax.image.resize(x, (2, 299, 299, 3), 'bilinear')) - 1
  assert np.max(np.abs(blurred - ref)) > 1e-2


def test_fid_equals_pytorch_fid(peers):
  """FID of two sets of 64 images, each side from its own network's features: jaxvision's
  streaming statistics and Fréchet distance against pytorch-fid's np.mean/np.cov and
  calculate_frechet_distance (scipy's sqrtm), within 1e-3 relative; and both distances on the
  same (pytorch-fid's) statistics. 64 < d images: singular covariances, which scipy's sqrtm
  warns about yet gets right here (as the eigenvalue route of gaussian_frechet_distance does)."""
  calc = peers.fid_score.calculate_frechet_distance
  a_t, b_t = (peers.torch_features[k][:, FID_DIMS] for k in ('rgb64', 'digits28'))
  mu_a_t, s_a_t = np.mean(a_t, axis=0), np.cov(a_t, rowvar=False)  # as pytorch-fid computes them
  mu_b_t, s_b_t = np.mean(b_t, axis=0), np.cov(b_t, rowvar=False)
  theirs = calc(mu_a_t, s_a_t, mu_b_t, s_b_t)
  running = fid.RunningStats()  # jaxvision's: streamed, batch by batch
  for start in range(0, N_SET, 24):
    running.update(peers.jax_features['rgb64'][start : start + 24, FID_DIMS])
  mu_a, s_a = running.stats()
  mu_b, s_b = fid.statistics(peers.jax_features['digits28'][:, FID_DIMS])
  ours = generative.gaussian_frechet_distance(mu_a, s_a, mu_b, s_b)
  same = generative.gaussian_frechet_distance(mu_a_t, s_a_t, mu_b_t, s_b_t)
  print(
    f'\nFID (d={a_t.shape[1]}) pytorch-fid {theirs:.6f}, jaxvision {ours:.6f} (rel '
    f'{abs(ours / theirs - 1):.1e}); jaxvision on pytorch-fid statistics {same:.6f} '
    f'(rel {abs(same / theirs - 1):.1e})'
  )
  assert theirs > 1.0
  assert ours == pytest.approx(theirs, rel=1e-3)
  assert same == pytest.approx(theirs, rel=1e-3)


def test_stats_files_are_pytorch_fids(peers):
  """A statistics file written by jaxvision is read by pytorch-fid's loader, and one written by
  pytorch-fid's --save-stats path (PNG files, PIL's convert('RGB'), its network) is read by
  jaxvision's, with the statistics jaxvision streams from the same uint8 images."""
  fid_score = peers.fid_score
  from PIL import Image

  images = peers.sets['digits28'][:16]
  folder = peers.tmp / 'digits'
  folder.mkdir()
  for i, image in enumerate(images):
    Image.fromarray(image[..., 0], mode='L').save(folder / f'{i:03d}.png')
  theirs_path = str(peers.tmp / 'pytorch_fid_stats.npz')
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr('pytorch_fid.inception.load_state_dict_from_url', lambda *a, **k: peers.state_dict)
    fid_score.save_fid_stats([str(folder), theirs_path], 8, 'cpu', 2048, num_workers=0)
  mu_t, s_t = fid.load_stats(theirs_path)
  mu, sigma = fid.split_statistics(peers.features, _split(images), batch=6)  # streamed
  assert _rel(mu, mu_t) < 1e-4 and _rel(sigma, s_t) < 1e-4
  ours_path = str(peers.tmp / 'jaxvision_stats.npz')
  fid.save_stats(ours_path, mu, sigma)
  m, s = fid_score.compute_statistics_of_path(ours_path, None, 50, 2048, 'cpu')
  np.testing.assert_array_equal(m, mu)
  np.testing.assert_array_equal(s, sigma)


def test_running_stats_equal_numpy():
  """mu and sigma streamed over uneven batches (one of 0 rows, one of 1) equal np.mean and
  np.cov of all rows at once, float64 within 1e-10, also far from the origin; likewise through
  `split_statistics` reading a split in chunks."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(301, 40)) * rng.uniform(0.1, 3, 40) + 50.0
  running = fid.RunningStats()
  for start, stop in ((0, 0), (0, 1), (1, 100), (100, 100), (100, 257), (257, 301)):
    running.update(x[start:stop].astype(np.float64))
  mu, sigma = running.stats()
  assert running.n == 301 and mu.dtype == sigma.dtype == np.float64
  np.testing.assert_allclose(mu, x.mean(0), rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-10)
  images = rng.integers(0, 256, (37, 4, 4, 1), dtype=np.uint8)
  flat = lambda im: np.asarray(im, np.float64).reshape(len(im), -1)
  mu, sigma = fid.split_statistics(flat, _split(images), batch=10)
  real = flat(images.astype(np.float32) / 255.0)  # as split_statistics reads them
  np.testing.assert_allclose(mu, real.mean(0), rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(sigma, np.cov(real, rowvar=False), rtol=1e-10, atol=1e-10)
  with pytest.raises(ValueError, match='at least 2 rows'):
    fid.statistics(x[:1])


def test_stats_file_round_trip_and_bad_files(tmp_path):
  """save_stats writes pytorch-fid's format (np.savez_compressed, 'mu', 'sigma'); load_stats
  reads it back exactly and refuses a file that is missing or holds other arrays, in one line."""
  from jaxvision.errors import ConfigError

  rng = np.random.default_rng(1)
  mu, sigma = rng.normal(size=5), np.cov(rng.normal(size=(9, 5)), rowvar=False)
  path = str(tmp_path / 'stats.npz')
  fid.save_stats(path, mu, sigma)
  with np.load(path) as f:
    assert sorted(f.keys()) == ['mu', 'sigma']
  m, s = fid.load_stats(path)
  np.testing.assert_array_equal(m, mu)
  np.testing.assert_array_equal(s, sigma)
  np.savez(path, mean=mu)
  with pytest.raises(ConfigError, match='not an .npz of mu and sigma') as e:
    fid.load_stats(path)
  assert '\n' not in str(e.value)
  with pytest.raises(ConfigError, match="eval.fid_stats='/no/such.npz' is not a file"):
    fid.load_stats('/no/such.npz')


def test_converter_names_and_refusals(tmp_path):
  """The converter's names are exactly the variables InceptionFeatures needs (the 94 convs,
  OIHW -> HWIO, BN weight -> scale, running_* -> batch_stats), fc / AuxLogits / counters are
  dropped, and a state dict of another network is refused in one line."""
  import jax
  import jax.numpy as jnp
  from flax import traverse_util

  from jaxvision.errors import ConfigError

  want = traverse_util.flatten_dict(
    jax.eval_shape(
      inception_model.InceptionV3(resize=75).init, jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3))
    ),
    sep='/',
  )
  rng = np.random.default_rng(0)
  state_dict = {'fc.weight': np.zeros((1008, 2048), np.float32), 'AuxLogits.fc.bias': np.zeros(3)}
  for key, spec in want.items():
    layer, leaf = key.split('/', 1)[1].rsplit('/', 1)
    torch_layer = layer.replace('/', '.')
    if leaf == 'kernel':
      h, w, i, o = spec.shape
      state_dict[f'{torch_layer}.weight'] = rng.normal(size=(o, i, h, w)).astype(np.float32)
    elif leaf in ('scale', 'bias', 'mean', 'var'):
      torch_leaf = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean'}.get(
        leaf, 'running_var'
      )
      state_dict[f'{torch_layer}.{torch_leaf}'] = rng.normal(size=spec.shape).astype(np.float32)
      state_dict[f'{torch_layer}.num_batches_tracked'] = np.zeros((), np.int64)
  flat = convert_lib.convert(state_dict)
  assert set(flat) == set(want)
  assert all(flat[k].shape == want[k].shape and flat[k].dtype == np.float32 for k in want)
  kernel = state_dict['Mixed_6b.branch7x7_2.conv.weight']  # [O, I, 1, 7]
  np.testing.assert_array_equal(
    flat['params/Mixed_6b/branch7x7_2/conv/kernel'], kernel.transpose(2, 3, 1, 0)
  )
  np.testing.assert_array_equal(
    flat['batch_stats/Mixed_6b/branch7x7_2/bn/var'],
    state_dict['Mixed_6b.branch7x7_2.bn.running_var'],
  )
  del state_dict['Mixed_7c.branch_pool.bn.running_var']
  with pytest.raises(ConfigError, match='incomplete: Mixed_7c/branch_pool') as e:
    convert_lib.convert(state_dict)
  assert '\n' not in str(e.value)
  with pytest.raises(ConfigError, match='layer1.0.conv1.weight is not a conv or BatchNorm'):
    convert_lib.convert({'layer1.0.conv1.weight': np.zeros((64, 3, 7, 7), np.float32)})
  assert convert_lib.main([str(tmp_path / 'missing.pth'), str(tmp_path / 'out.npz')]) == 2


def test_generative_metrics_stream_inception_statistics(tmp_path, monkeypatch):
  """GenerativeMetrics with Inception weights: eval/fid and eval/fid_floor are the Fréchet
  distances of the streamed statistics (eval split, train split, samples), and with
  eval.fid_stats they are against that pytorch-fid file instead of the eval split."""
  import jax
  import jax.numpy as jnp
  import ml_collections
  from flax import traverse_util

  shapes = traverse_util.flatten_dict(
    jax.eval_shape(
      inception_model.InceptionV3(resize=75).init, jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3))
    ),
    sep='/',
  )
  rng = np.random.default_rng(0)
  flat = {
    k: np.ones(v.shape, np.float32)
    if k.endswith(('/var', '/scale'))
    else rng.normal(0.0, 0.05, v.shape).astype(np.float32)
    for k, v in shapes.items()
  }
  weights = str(tmp_path / 'inception.npz')
  np.savez(weights, **flat)
  train, test = _blobs(rng, 6, 8, 3), _blobs(rng, 5, 8, 3)
  splits = [
    types.SimpleNamespace(**vars(_split(x)), image_shape=x.shape[1:]) for x in (train, test)
  ]
  fake = _blobs(rng, 4, 8, 3).astype(np.float32) / 255.0
  sample = lambda state, key, n, labels: jnp.resize(jnp.asarray(fake), (n, *fake.shape[1:]))
  config = ml_collections.ConfigDict(
    {
      'seed': 0,
      'data': {'name': 'blobs'},
      'eval': {'fd_samples': 4, 'inception_weights': weights, 'fid_stats': ''},
    }
  )
  small = fid.InceptionFeatures(weights, batch=6, resize=75)  # 299: 16x the compute
  monkeypatch.setattr(generative, 'InceptionFeatures', lambda path: small)  # compiled once
  # the distance itself is tested above; here its arguments (a 2048-d eigh costs ~5 s on 2 cores)
  monkeypatch.setattr(generative, 'gaussian_frechet_distance', lambda *stats: stats)
  metrics = generative.GenerativeMetrics(config, sample, *splits)
  assert metrics.features is None  # not digits: Inception alone
  features = metrics.inception
  stats = {
    k: fid.statistics(features(x.astype(np.float32) / 255.0))
    for k, x in (('train', train), ('test', test))
  }
  stats['fake'] = fid.statistics(features(fake))

  def check(got, a, b):
    for x, y in zip(got, (*stats[a], *stats[b])):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)

  out = metrics(None)
  check(out['eval/fid'], 'fake', 'test')
  check(out['eval/fid_floor'], 'train', 'test')
  reference = str(tmp_path / 'reference.npz')
  fid.save_stats(reference, *stats['train'])
  config.eval.fid_stats = reference
  out = generative.GenerativeMetrics(config, sample, *splits)(None)
  check(out['eval/fid'], 'fake', 'train')
  check(out['eval/fid_floor'], 'train', 'train')


def test_stats_command_writes_a_splits_statistics(peers, tfds_dir, tmp_path):
  """`python -m jaxvision.evaluate.fid` from the repo root writes the Inception mu/sigma of a
  split, equal to the statistics of that split's features; a bad file is one line, exit 2."""
  out = str(tmp_path / 'stats.npz')
  command = [sys.executable, '-m', 'jaxvision.evaluate.fid', '--config', 'configs/dcgan.py']
  command += [f'--config.data.tfds_dir={tfds_dir}', '--weights', peers.npz, '--split', 'test[:12]']
  done = subprocess.run([*command, '--out', out], cwd=ROOT, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]
  assert 'mu/sigma of 12 mnist10k test[:12] images (d=2048)' in done.stdout
  config = config_lib.from_file('configs/dcgan.py', '')
  config.data.tfds_dir = tfds_dir
  images = pipeline.load_split(config.data, 'test').read(np.arange(12))['image']
  mu, sigma = fid.statistics(peers.features(images.astype(np.float32) / 255.0))
  got_mu, got_sigma = fid.load_stats(out)
  np.testing.assert_allclose(got_mu, mu, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(got_sigma, sigma, rtol=1e-5, atol=1e-7)
  bad = [*command, '--out', out, '--weights', str(tmp_path / 'missing.npz')]
  done = subprocess.run(bad, cwd=ROOT, capture_output=True, text=True)
  assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
