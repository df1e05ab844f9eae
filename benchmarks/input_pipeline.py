"""ImageNet-format input pipeline: jaxvision's grain pipeline against a PyTorch DataLoader.

    python benchmarks/make_imagenet_like.py --data_dir /tmp/imagenet_like   # once: 20,000 JPEGs
    python benchmarks/input_pipeline.py --data_dir /tmp/imagenet_like       # ~6 min on 2 cores
    python benchmarks/input_pipeline.py --data_dir /tmp/imagenet_like --workers 1,2,4 --rounds 3

Both loaders read the same records of the same array_record files (TFDS `imagenet2012`'s
format, images undecoded) and make the same training batches on the same cores:

* **jaxvision**: `pipeline.train_dataset` of `configs/resnet.py:imagenet` with data.workers=W
  grain worker processes, one thread each (data.read_threads=1): decode (PIL, `Image.draft`
  where the crop allows), inception crop, flip, resize to 224, normalise: float32 NHWC batches,
  what the train step takes. Also data.workers=0 with W threads in this process (`threads`).
* **torch**: `torch.utils.data.DataLoader(num_workers=W, shuffle=True)` over a Dataset that
  decodes with PIL (`Image.open(...).convert('RGB')`, torchvision's loader) and applies
  `transforms.Compose([RandomResizedCrop(224, scale=(0.08, 1)), RandomHorizontalFlip(),
  ToTensor(), Normalize(mean, std)])`: float32 NCHW batches.

Timing: --rounds interleaved rounds (the order rotates each round, so load from other processes
hits all loaders alike). In a round each loader in turn is started afresh at another place in
the data, hands over its first W + 1 batches (worker start-up, and the batches its W workers
began together; not timed), then `--batches` batches are timed, and it is closed before the
next loader starts (a loader left running would fill its buffers while another is timed).
images/s = batch * batches / median round time; per core = images/s / W (W worker processes or
threads; the consuming process, which only receives the batches, runs on the same cores).

Per-image costs (one thread, no loader, the same --sample images, interleaved rounds; median
ms per image) split the work: `decode` (full decode only), `crop_host` (jaxvision's host
inception crop: decode with draft + crop-resize + flip), `crop_host_nodraft` (the same, full
decode), `resize256_center` (the host part of the earlier in-step crop: full decode, shorter side
to 256 bicubic, centre 256 square; the crop then ran in the train step), `torchvision` (PIL
decode + the four transforms), and `normalise_224` / `normalise_256` (uint8 -> standardised
float32 rows of a batch, as the loader writes them). The `large` rows repeat crop_host with and
without draft on images twice the size (about 800x700), where draft can act.

Writes benchmarks/results/input_pipeline-latest.json (--out).
"""

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
STEP_IPS = 3000  # images/s of a v5e / A100-class ResNet-50 train step, for the accounting


class TorchImages:
  """The train split's records as torchvision's ImageFolder would give them: PIL decode, then
  the transforms."""

  def __init__(self, data_dir: str, transform):
    self.data_dir, self.transform, self._source = data_dir, transform, None

  def _records(self):
    if self._source is None:  # opened in the worker that reads it
      import tensorflow_datasets as tfds

      b = tfds.builder('imagenet2012', data_dir=self.data_dir, file_format='array_record')
      self._source = b.as_data_source('train', decoders={'image': tfds.decode.SkipDecoding()})
    return self._source

  def __len__(self):
    return len(self._records())

  def __getitem__(self, i):
    from PIL import Image

    record = self._records()[i]
    image = Image.open(io.BytesIO(record['image'])).convert('RGB')
    return self.transform(image), record['label']


def torch_loader(data_dir: str, batch: int, workers: int, seed: int = 0):
  """A plain DataLoader with torchvision's ImageNet training transforms."""
  import torch
  from torch_peers import import_torchvision

  transforms = import_torchvision().transforms
  transform = transforms.Compose(
    [
      transforms.RandomResizedCrop(224, scale=(0.08, 1.0)),
      transforms.RandomHorizontalFlip(),
      transforms.ToTensor(),
      transforms.Normalize(MEAN, STD),
    ]
  )
  return torch.utils.data.DataLoader(
    TorchImages(data_dir, transform),
    batch_size=batch,
    shuffle=True,
    num_workers=workers,
    persistent_workers=True,
    drop_last=True,
    generator=torch.Generator().manual_seed(seed),
  )


def jax_config(data_dir: str, batch: int, workers: int, threads: int):
  from jaxvision import config as config_lib

  config = config_lib.from_file(os.path.join(ROOT, 'configs', 'resnet.py'), 'imagenet')
  config.data.tfds_dir = data_dir
  config.data.batch_size = batch
  config.data.workers = workers
  config.data.read_threads = threads
  return config


def per_image_costs(data_dir: str, n: int, rounds: int) -> dict:
  """Median ms per image of each host-side piece of work, one thread, interleaved rounds."""
  import make_imagenet_like
  import numpy as np
  import tensorflow_datasets as tfds
  from PIL import Image
  from torch_peers import import_torchvision

  from jaxvision.data import images, pipeline

  transforms = import_torchvision().transforms
  b = tfds.builder('imagenet2012', data_dir=data_dir, file_format='array_record')
  source = b.as_data_source('train', decoders={'image': tfds.decode.SkipDecoding()})
  jpegs = [source[i]['image'] for i in range(n)]
  large = [make_imagenet_like.jpeg(0, 'train', k, k % 1000, scale=2.0) for k in range(n // 2)]
  torchvision = transforms.Compose(
    [
      transforms.RandomResizedCrop(224, scale=(0.08, 1.0)),
      transforms.RandomHorizontalFlip(),
      transforms.ToTensor(),
      transforms.Normalize(MEAN, STD),
    ]
  )
  rngs = lambda: [np.random.default_rng((0, i)) for i in range(n)]

  def decoded(jpeg):  # a JPEG decoded in full, so that draft cannot act
    img = Image.open(io.BytesIO(jpeg))
    img.load()
    return img

  def normalise(size):
    pixels, out = np.zeros((size, size, 3), np.uint8), np.empty((n, size, size, 3), np.float32)
    for i in range(n):
      pipeline.scale_pixels(pixels, 'imagenet', out[i])

  work = {
    'decode': lambda: [Image.open(io.BytesIO(j)).convert('RGB').load() for j in jpegs],
    'crop_host': lambda: [images.inception_crop(j, r, 224) for j, r in zip(jpegs, rngs())],
    'crop_host_nodraft': lambda: [
      images.inception_crop(decoded(j), r, 224) for j, r in zip(jpegs, rngs())
    ],
    'resize256_center': lambda: [images.resize_center_crop(j, 256, 256) for j in jpegs],
    'torchvision': lambda: [torchvision(Image.open(io.BytesIO(j)).convert('RGB')) for j in jpegs],
    'normalise_224': lambda: normalise(224),
    'normalise_256': lambda: normalise(256),
    'large_crop_host': lambda: [images.inception_crop(j, r, 224) for j, r in zip(large, rngs())],
    'large_crop_host_nodraft': lambda: [
      images.inception_crop(decoded(j), r, 224) for j, r in zip(large, rngs())
    ],
  }
  count = {k: len(large) if k.startswith('large') else n for k in work}
  times = {k: [] for k in work}
  names = list(work)
  for r in range(rounds):
    for name in names[r % len(names) :] + names[: r % len(names)]:
      start = time.perf_counter()
      work[name]()
      times[name].append((time.perf_counter() - start) / count[name] * 1e3)
  out = {k: round(statistics.median(v), 3) for k, v in times.items()}

  def draft_share(jpegs):  # the share of crops that let libjpeg decode at a reduced scale
    scales = []
    for j, rng in zip(jpegs, rngs()):
      img = images.open_image(j)
      left, top, cw, ch = images.crop_box(rng, *img.size)
      scales.append(images.draft(img, (img.size[0] * 224 / cw, img.size[1] * 224 / ch), 3))
    return round(float(np.mean(np.array(scales) < 1)), 3)

  out['draft_share'], out['large_draft_share'] = draft_share(jpegs), draft_share(large)
  out['jpeg_kb_mean'] = round(float(np.mean([len(j) for j in jpegs])) / 1e3, 1)
  out['large_jpeg_kb_mean'] = round(float(np.mean([len(j) for j in large])) / 1e3, 1)
  return out


class Runner:
  """One loader, timed in rounds: each round starts it afresh (at another place in the data),
  lets its workers start and hand over their first batches (not timed), then times `batches`
  batches. A loader is never left running while another is timed: its workers would fill its
  buffers meanwhile, and the next round would time the buffers."""

  def __init__(self, name: str, workers: int, make, batch: int):
    self.name, self.workers, self.make, self.batch = name, workers, make, batch
    self.times, self.startup_s = [], []

  def round(self, r: int, batches: int) -> None:
    start = time.perf_counter()
    it = self.make(r)
    for _ in range(max(self.workers, 1) + 1):  # start-up and the batches begun in parallel
      next(it)
    self.startup_s.append(time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(batches):
      next(it)
    self.times.append(time.perf_counter() - start)
    if hasattr(it, 'close'):
      it.close()
    else:  # torch's iterator ends its workers when it is deleted
      it._shutdown_workers()
    del it

  def result(self, batches: int) -> dict:
    ips = self.batch * batches / statistics.median(self.times)
    cores = max(self.workers, 1)
    return {
      'loader': self.name,
      'workers': self.workers,
      'images_per_s': round(ips, 1),
      'images_per_s_per_core': round(ips / cores, 1),
      'cores_for_3000_ips': round(STEP_IPS / (ips / cores), 1),
      'round_s': [round(t, 2) for t in self.times],
      'startup_s': round(statistics.median(self.startup_s), 1),
    }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--data_dir', default='/tmp/imagenet_like')
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--workers', default='1,2', help='worker processes, comma-separated')
  parser.add_argument('--batches', type=int, default=8, help='timed batches per round')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--sample', type=int, default=200, help='images of the per-image costs')
  parser.add_argument('--no-threads', action='store_true', help='skip data.workers=0 threads')
  parser.add_argument('--out', default=os.path.join(HERE, 'results', 'input_pipeline-latest.json'))
  args = parser.parse_args()
  sys.path.insert(0, HERE)
  sys.path.insert(0, os.path.join(ROOT, 'tests'))  # torch_peers: torchvision beside CPU torch
  sys.path.insert(0, ROOT)
  os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')  # before torch: see step_throughput.py
  import jax
  import torch

  torch.set_num_threads(1)  # the per-image costs are one thread's; DataLoader workers use 1 too
  import tensorflow_datasets as tfds

  from jaxvision.data import pipeline

  data_dir = os.path.abspath(os.path.expanduser(args.data_dir))
  if not tfds.builder('imagenet2012', data_dir=data_dir, file_format='array_record').is_prepared():
    sys.exit(f'{data_dir} holds no imagenet2012; run benchmarks/make_imagenet_like.py first')
  workers = [int(w) for w in args.workers.split(',')]
  config = jax_config(data_dir, args.batch, 0, 1)
  split = pipeline.load_split(config.data, 'train')
  print(f'{split.fingerprint}, batch {args.batch}, workers {workers}', flush=True)

  costs = per_image_costs(data_dir, args.sample, args.rounds)
  print('per-image ms:', json.dumps(costs), flush=True)

  def jax_iter(w: int, threads: int, r: int):
    it = iter(pipeline.train_dataset(jax_config(data_dir, args.batch, w, threads), split))
    it.set_state({'next_index': 1000 * r})  # each round other records
    return it

  def torch_iter(w: int, r: int):
    return iter(torch_loader(data_dir, args.batch, w, seed=r))

  runners = []
  for w in workers:
    runners.append(Runner('jaxvision', w, lambda r, w=w: jax_iter(w, 1, r), args.batch))
    runners.append(Runner('torch', w, lambda r, w=w: torch_iter(w, r), args.batch))
    if not args.no_threads:
      runners.append(Runner('jaxvision_threads', w, lambda r, w=w: jax_iter(0, w, r), args.batch))
  for r in range(args.rounds):
    for runner in runners[r % len(runners) :] + runners[: r % len(runners)]:
      runner.round(r, args.batches)
  rows = [runner.result(args.batches) for runner in runners]
  for row in rows:
    print(json.dumps(row), flush=True)
  by = {(row['loader'], row['workers']): row['images_per_s'] for row in rows}
  ratios = {f'jaxvision/torch@{w}': round(by['jaxvision', w] / by['torch', w], 3) for w in workers}
  print(json.dumps(ratios))
  result = {
    'command': 'python benchmarks/input_pipeline.py ' + ' '.join(sys.argv[1:]),
    'dataset': split.fingerprint,
    'batch': args.batch,
    'batches_per_round': args.batches,
    'rounds': args.rounds,
    'per_image_ms': costs,
    'loaders': rows,
    'ratios': ratios,
    'cpu': platform.processor() or platform.machine(),
    'cores': os.cpu_count(),
    'load_average_at_end': os.getloadavg(),
    'versions': {'jax': jax.__version__, 'torch': torch.__version__},
    'date': time.strftime('%Y-%m-%d %H:%M'),
  }
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=1)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
