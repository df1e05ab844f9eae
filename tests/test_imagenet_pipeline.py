"""ImageNet's input path on data in TFDS imagenet2012's own format
(benchmarks/make_imagenet_like.py): the generator, configs/resnet.py:imagenet's batches, their
determinism and resumption, grain worker processes, and each of two processes reading only its
own records."""

import io
import json
import os
import sys

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from conftest import ROOT, load_config, two_processes
from jaxvision import config as config_lib
from jaxvision import train
from jaxvision.data import images, pipeline

sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import make_imagenet_like  # noqa: E402  (found through the sys.path entry above)

N, N_VAL = 48, 8


@pytest.fixture(scope='module')
def imagenet_dir(tmp_path_factory):
  """A tiny imagenet2012 (48 train, 8 validation JPEGs), written once for the module."""
  data_dir = str(tmp_path_factory.mktemp('imagenet_like'))
  make_imagenet_like.make(data_dir, N, N_VAL)
  return data_dir


def _config(data_dir, **overrides):
  """configs/resnet.py:imagenet on `data_dir`, batch 8, in-process unless data__workers says."""
  return load_config(
    'resnet', 'imagenet', data_dir, **{'data__batch_size': 8, 'data__workers': 0, **overrides}
  )


def _take(config, split, n, state=None):
  it = iter(pipeline.train_dataset(config, split))
  if state is not None:
    it.set_state(state)
  batches = [next(it) for _ in range(n)]
  state = it.get_state()
  it.close()
  return batches, state


def test_the_generator_writes_what_tfds_reads_as_imagenet2012(imagenet_dir):
  b = tfds.builder('imagenet2012', data_dir=imagenet_dir, file_format='array_record')
  assert b.is_prepared() and str(b.version) == '5.1.0'
  assert type(b).__module__.startswith('tensorflow_datasets.datasets.imagenet2012')
  assert {s: i.num_examples for s, i in b.info.splits.items()} == {'train': N, 'validation': N_VAL}
  features = b.info.features
  assert isinstance(features['image'], tfds.features.Image)
  assert features['image'].encoding_format == 'jpeg' and features['label'].num_classes == 1000
  assert isinstance(features['file_name'], tfds.features.Text)
  assert os.path.exists(os.path.join(b.data_dir, 'dataset_info.json'))
  source = b.as_data_source('train', decoders={'image': tfds.decode.SkipDecoding()})
  names, sizes = [], []
  for i in range(N):
    record = source[i]
    img = Image.open(io.BytesIO(record['image']))
    assert img.format == 'JPEG' and img.mode == 'RGB'
    assert 300 <= img.size[0] <= 500 and 260 <= img.size[1] <= 440
    synset, k = record['file_name'].decode().removesuffix('.JPEG').split('_')
    assert features['label'].str2int(synset) == record['label'] == int(k) % 1000
    names.append(int(k))
    sizes.append(len(record['image']))
  assert sorted(names) == list(range(N))  # every image once, in TFDS's hashed order
  assert names != sorted(names)
  assert 50_000 < np.mean(sizes) < 200_000  # ImageNet's JPEGs are about 110 KB
  val = b.as_data_source('validation')  # TFDS's own decoding (PIL) works too
  labels = make_imagenet_like.VAL_LABELS
  for i in range(N_VAL):
    record = val[i]
    k = int(record['file_name'].decode()[len('ILSVRC2012_val_') : -len('.JPEG')])
    assert features['label'].int2str(record['label']) == labels[k - 1]
    assert record['image'].dtype == np.uint8 and record['image'].shape[-1] == 3


def test_the_generator_is_a_function_of_seed_and_index():
  a = make_imagenet_like.jpeg(0, 'train', 5, 5)
  assert a == make_imagenet_like.jpeg(0, 'train', 5, 5)
  assert a != make_imagenet_like.jpeg(1, 'train', 5, 5)
  assert a != make_imagenet_like.jpeg(0, 'validation', 5, 5)


def test_the_imagenet_preset_makes_normalised_224_batches(imagenet_dir):
  config = _config(imagenet_dir)
  train_split = pipeline.load_split(config.data, 'train')
  eval_split = pipeline.load_split(config.data, config.data.eval_split)
  assert train_split.image_shape == eval_split.image_shape == (224, 224, 3)
  assert train_split.augment is not None and eval_split.augment is None
  assert train_split.fingerprint.startswith(f'imagenet2012/5.1.0/train/n={N}/')
  (batch,), _ = _take(config, train_split, 1)
  assert batch['image'].shape == (8, 224, 224, 3) and batch['image'].dtype == np.float32
  assert batch['label'].shape == (8,) and batch['label'].dtype == np.int32
  pixels = batch['image'] * pipeline.IMAGENET_STD + pipeline.IMAGENET_MEAN  # back to [0, 1]
  assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6 and pixels.std() > 0.05
  # Batch 0 is records 0-7 of grain's shuffle of the split, each cropped on the host with the
  # generator of (seed, position), decoded from the stored JPEG.
  order = grain.MapDataset.range(N).shuffle(seed=config.seed)
  raw = tfds.builder('imagenet2012', data_dir=imagenet_dir).as_data_source(
    'train', decoders={'image': tfds.decode.SkipDecoding()}
  )
  for g in range(8):
    record = raw[int(order[g])]
    crop = images.inception_crop(record['image'], np.random.default_rng((config.seed, g)), 224)
    expected = (crop / np.float32(255) - pipeline.IMAGENET_MEAN) / pipeline.IMAGENET_STD
    np.testing.assert_allclose(batch['image'][g], expected, atol=1e-6)
    assert batch['label'][g] == record['label']
  batch = next(pipeline.eval_batches(config, eval_split, 8))
  assert batch['image'].shape == (8, 224, 224, 3) and batch['mask'].sum() == N_VAL
  first = tfds.builder('imagenet2012', data_dir=imagenet_dir).as_data_source(
    'validation', decoders={'image': tfds.decode.SkipDecoding()}
  )[0]
  centre = images.resize_center_crop(first['image'], 256, 224)  # eval: 224 of 256, file order
  np.testing.assert_allclose(
    batch['image'][0] * pipeline.IMAGENET_STD + pipeline.IMAGENET_MEAN, centre / 255, atol=1e-6
  )


def test_order_and_crops_are_a_function_of_seed_and_step_and_resume_exactly(imagenet_dir):
  config = _config(imagenet_dir)
  split = pipeline.load_split(config.data, 'train')
  a, _ = _take(config, split, 3)
  b, state = _take(config, split, 2)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])
  assert state == {'next_index': 2}
  (resumed,), _ = _take(config, split, 1, state)
  np.testing.assert_array_equal(resumed['image'], a[2]['image'])
  (other,), _ = _take(_config(imagenet_dir, seed=1), split, 1)
  assert not np.array_equal(other['label'], a[0]['label'])
  # Epoch 2 (batches 6-11) sees the same records in another order, with other crops.
  c, _ = _take(config, split, 12)
  labels = [np.sort(np.concatenate([x['label'] for x in c[e * 6 : (e + 1) * 6]])) for e in (0, 1)]
  np.testing.assert_array_equal(labels[0], labels[1])
  assert not np.array_equal(c[0]['label'], c[6]['label'])


def test_worker_processes_make_the_same_batches_and_resume_across_worker_counts(imagenet_dir):
  config = _config(imagenet_dir, data__image_size=64)
  split = pipeline.load_split(config.data, 'train')
  threads, state = _take(config, split, 4)
  workers_config = _config(imagenet_dir, data__image_size=64, data__workers=2)
  workers, workers_state = _take(workers_config, split, 4)
  assert workers_state == state  # the step alone: a checkpoint does not depend on the workers
  for x, y in zip(threads, workers):
    np.testing.assert_array_equal(x['image'], y['image'])
  (after,), _ = _take(config, split, 1, workers_state)
  (expected,), _ = _take(workers_config, split, 1, state)
  np.testing.assert_array_equal(after['image'], expected['image'])


@pytest.mark.xdist_group('multiprocess')  # never two jax.distributed jobs at once
def test_each_of_two_processes_reads_only_its_own_records(imagenet_dir, tmp_path):
  """jax.distributed on 127.0.0.1: each process reads exactly its 4 rows of every global batch of
  8 from the TFDS source, and its images are its rows of the one-process batches."""
  steps = 3
  outs = [str(tmp_path / f'process_{i}.npz') for i in range(2)]
  results = two_processes(
    [os.path.join('tests', 'imagenet_records.py')],
    [imagenet_dir, str(tmp_path / 'process_{}.npz'), '8', str(steps)],
  )
  for code, err in results:
    assert code == 0, err[-3000:]
  config = _config(imagenet_dir, data__image_size=32)
  order = grain.MapDataset.range(N).shuffle(seed=config.seed).repeat()
  global_batches = [np.array([order[s * 8 + r] for r in range(8)]) for s in range(20)]
  one, _ = _take(config, pipeline.load_split(config.data, 'train'), steps)
  read = {}
  for p, out in enumerate(outs):
    data = np.load(out)
    assert int(data['process']) == p
    for idx in data['reads']:  # each read is this process's rows of one global batch
      s = next(s for s, g in enumerate(global_batches) if np.array_equal(idx, g[4 * p : 4 * p + 4]))
      read[p, s] = set(idx.tolist())
    for s in range(steps):
      np.testing.assert_allclose(data['images'][s], one[s]['image'][4 * p : 4 * p + 4], atol=1e-6)
  for s in range(steps):
    assert not read[0, s] & read[1, s]
    assert read[0, s] | read[1, s] == set(global_batches[s].tolist())


def test_the_imagenet_preset_trains_on_the_generated_data(imagenet_dir, tmp_path):
  """configs/resnet.py:imagenet as written (its grain worker processes included), the network
  and the images shrunk, two steps and an eval."""
  config = load_config(
    'resnet',
    'imagenet',
    imagenet_dir,
    model__stage_sizes=(1, 1),
    model__width=8,
    data__image_size=32,
    data__batch_size=16,
    data__eval_batch_size=8,
    train__steps=2,
    train__log_every=1,
    train__eval_every=2,
    train__ckpt_every=2,
  )
  assert config.data.workers != 0
  final = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert np.isfinite(final['eval/loss']) and final['eval/accuracy'] >= 0
  with open(tmp_path / 'run' / 'run.json') as f:
    info = json.load(f)
  assert info['data']['train'].startswith(f'imagenet2012/5.1.0/train/n={N}/')


def test_inception_crop_draws_torchvision_crops_and_decodes_jpegs_at_reduced_scale():
  rng = np.random.default_rng(0)
  for _ in range(200):
    w, h = int(rng.integers(300, 501)), int(rng.integers(260, 441))
    left, top, cw, ch = images.crop_box(rng, w, h)
    assert min(left, top) >= 0 and left + cw <= w and top + ch <= h
    assert 0.07 * w * h <= cw * ch and 0.74 <= cw / ch <= 1.35  # area >= 8 %, ratio in [3/4, 4/3]
  assert images.crop_box(rng, 1000, 10) == (493, 0, 13, 10)  # no crop fits: the centred 4:3 one
  big = make_imagenet_like.jpeg(0, 'train', 0, 0, scale=3.0)  # about 1200x1050
  img = images.open_image(big)
  assert images.draft(img, (img.size[0] / 3, img.size[1] / 3), 3) == 0.5  # decodes at 1/2
  full = np.asarray(Image.open(io.BytesIO(big)).convert('RGB'))
  for seed in range(4):
    drafted = images.inception_crop(big, np.random.default_rng(seed), 64)
    decoded = images.inception_crop(full, np.random.default_rng(seed), 64)
    assert drafted.shape == decoded.shape == (64, 64, 3)
    assert np.abs(drafted.astype(float) - decoded).mean() < 4  # the same crop, within 4/255
  grey = images.inception_crop(big, np.random.default_rng(0), 16, channels=1)
  assert grey.shape == (16, 16, 1)


def test_bad_worker_counts_and_crops_that_cannot_mix_are_one_line(imagenet_dir):
  bad = {
    'data.workers=-2 must be >= -1 (0: no worker processes; -1: one per CPU core)': dict(
      data__workers=-2
    ),
    'data.augment=inception_crop crops the train images as they are read': dict(data__clusters=10),
  }
  for message, overrides in bad.items():
    with pytest.raises(config_lib.ConfigError) as e:
      config_lib.validate(_config(imagenet_dir, **overrides))
    assert str(e.value).startswith(message) and '\n' not in str(e.value)
