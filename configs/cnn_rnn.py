"""CNN-RNN on sequences of digit images: predict the sum of T = 4 mnist10k digits.

  python run.py --config configs/cnn_rnn.py            # digit_sequences, T = 4, offline
  python run.py --config configs/cnn_rnn.py:smoke      # a few steps, for tests
  python run.py --config configs/cnn_rnn.py --config.data.seq_len=3 \
      --config.model.input_shape='(3, 28, 28, 1)' --config.model.num_classes=28
"""

from jaxvision import config as config_lib
from jaxvision import tasks
from jaxvision.data import sequences


def get_config(preset: str = ''):
  c = tasks.base_config('classification')
  c.model.name = 'cnn_rnn'
  c.model.num_classes = 37  # 9 * 4 + 1 possible sums
  c.model.input_shape = (4, 28, 28, 1)
  c.model.features = (16, 32)
  c.model.frame_dim = 128
  c.model.hidden = 128
  c.model.conv_impl = 'im2col'
  c.model.norm = True
  c.model.dropout = (0.25, 0.25)  # after the convs, on the frame features

  c.data.name = 'digit_sequences'
  c.data.update(sequences.config())  # the keys of digit_sequences: seq_len (4), counts
  c.data.batch_size = 64  # sequences: 256 frames
  c.data.augment = 'shift'  # every frame shifted on its own
  c.data.shift = 2

  c.optim.name = 'adamw'
  c.optim.lr = 3e-3
  c.optim.schedule = 'onecycle'
  c.optim.warmup_frac = 0.2
  c.optim.weight_decay = 1e-4
  c.optim.grad_clip = 1.0
  c.loss.label_smoothing = 0.1

  c.train.steps = 10000  # 640,000 sequences: 16 passes over the 40,000 train sequences
  c.train.log_every = 50
  c.train.eval_every = 2500
  c.train.ckpt_every = 1000

  if preset == 'smoke':
    config_lib.smoke(c)
    c.data.eval_split = 'test'  # sequences are drawn per split: the eval ones are counted instead
    c.data.seq_test_count = config_lib.SMOKE_EVAL_EXAMPLES
    c.model.features = (4, 8)
    c.model.frame_dim = 16
    c.model.hidden = 16
  elif preset:
    raise ValueError(f'configs/cnn_rnn.py has presets smoke, not {preset!r}')
  return c
