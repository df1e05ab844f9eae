"""Classification accuracy score (CAS): configs/cnn.py trained only on generated, labelled
digits and tested on the real test split; its eval/accuracy is the generator's CAS.

  python run.py --config configs/cgan.py --workdir runs/cgan
  python run.py --config configs/cgan.py --workdir runs/cgan --mode sample --config.sample.n=10000
  python run.py --config configs/cas.py --workdir runs/cas_cgan \
      --config.data.synthetic.path=runs/cgan/samples/step_4000.npz
"""

import os

from jaxvision import config as config_lib


def get_config(preset: str = ''):
  c = config_lib.from_file(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'cnn.py'), preset
  )
  # The im2col convolutions its results were measured with (configs/cnn.py's default since is
  # XLA's own: faster, other last digits).
  c.model.conv_impl = 'im2col'
  c.cpu_convolutions = 'ynnpack'
  c.data.synthetic.mode = 'only'
  c.data.synthetic.path = config_lib.required()  # the generator's samples .npz
  return c
