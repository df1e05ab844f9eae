"""One process of tests/test_imagenet_pipeline.py's two-process job: reads the first train batches
of configs/resnet.py:imagenet (in-process threads, so that its reads are seen here) and writes
the records it read and the batches it made.

  python tests/imagenet_records.py TFDS_DIR OUT_{}.npz BATCH STEPS \
      --coordinator_address=127.0.0.1:PORT --num_processes=2 --process_id=I
"""

import dataclasses
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxvision import cli  # noqa: E402  (this checkout's jaxvision, through the path above)
from jaxvision import config as config_lib  # noqa: E402


def main(argv):
  tfds_dir, out, batch, steps, *flags = argv
  values = dict(flag.lstrip('-').split('=', 1) for flag in flags)
  cli.init_distributed(
    values['coordinator_address'], int(values['num_processes']), int(values['process_id'])
  )
  import jax
  import numpy as np

  from jaxvision.data import pipeline

  config = config_lib.from_file(os.path.join(ROOT, 'configs', 'resnet.py'), 'imagenet')
  config.data.tfds_dir, config.data.batch_size = tfds_dir, int(batch)
  config.data.workers, config.data.image_size = 0, 32
  split = pipeline.load_split(config.data, 'train')
  reads = []  # the record indices of each read of the TFDS source (one per batch, prefetch too)
  read = split.read
  split = dataclasses.replace(split, read=lambda idx: (reads.append(np.array(idx)), read(idx))[1])
  it = iter(pipeline.train_dataset(config, split))
  images = [next(it)['image'] for _ in range(int(steps))]
  it.close()
  np.savez(
    out.format(jax.process_index()),
    reads=np.stack(reads),
    images=np.stack(images),
    process=jax.process_index(),
  )


if __name__ == '__main__':
  main(sys.argv[1:])
