"""LSTM classifier: images read as sequences of rows (offline default) or token sequences.

python run.py --config configs/lstm.py            # 28 rows of 28 pixels, mnist10k
python run.py --config configs/lstm.py:smoke      # a few steps, for tests
python run.py --config configs/lstm.py:imdb       # TFDS imdb_reviews as word tokens (prepared)
"""

import os

import ml_collections

from jaxvision import config as config_lib
from jaxvision.data import text


def get_config(preset: str = ''):
  # The data (mnist10k, +-2 px shifts), AdamW and label smoothing of configs/cnn.py.
  c = config_lib.from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'cnn.py'))
  c.model = ml_collections.ConfigDict(
    {
      'name': 'lstm',
      'num_classes': 10,
      'input_shape': (28, 28, 1),  # 28 time steps of 28 pixels
      'hidden': 128,
      'layers': 2,
      'bidirectional': True,
      'vocab_size': 0,
      'embed_dim': 128,
      'dropout': 0.1,
    }
  )
  c.optim.warmup_frac = 0.2
  c.optim.grad_clip = 1.0
  c.train.steps = 2500  # 40 epochs of the 8,000 training images
  c.train.eval_every = 500
  c.train.ckpt_every = 500

  if preset == 'smoke':
    config_lib.smoke(c)
    c.model.hidden = 16
    c.model.layers = 1
  elif preset == 'imdb':  # sentiment of movie reviews: 256 word tokens, bidirectional LSTM
    c.data.name = 'imdb_reviews'
    c.data.update(text.config())  # 256 word tokens, a vocabulary of 20,000
    c.data.augment = 'none'
    c.model.num_classes = 2
    c.model.input_shape = (256,)
    c.model.vocab_size = 20000
    c.model.layers = 1
    c.model.dropout = 0.3
    c.data.batch_size = 64
    c.train.steps = 391 * 5  # 5 epochs of the 25,000 training reviews
    c.train.eval_every = 391
    c.train.ckpt_every = 391
  elif preset:
    raise ValueError(f'configs/lstm.py has presets smoke and imdb, not {preset!r}')
  return c
