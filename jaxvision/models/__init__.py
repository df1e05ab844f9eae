"""Model registry: `config.model.name` picks the class, the other `config.model`
keys are its constructor fields. Models are plain Flax modules that know
nothing of losses or optimizers; classifiers take `(x, *, train)`, VAEs have
`encode(x, y)` / `decode(z, y)` (see models/vae.py)."""
import dataclasses

import flax.linen as nn

from jaxvision.models import attention, cnn, cnn_rnn, gan, lstm, resnet, vae, vit

MODELS: dict[str, type[nn.Module]] = {
    'cnn': cnn.CNN,
    'resnet': resnet.ResNet,
    'vit': vit.ViT,
    'attention': attention.AttentionClassifier,
    'lstm': lstm.LSTMClassifier,
    'cnn_rnn': cnn_rnn.CNNRNN,
    'gan_mlp': gan.MLPGAN,
    'dcgan': gan.DCGAN,
    'vae_mlp': vae.MLPVAE,
    'vae_conv': vae.ConvVAE,
    'vae_cond': vae.ConditionalVAE,
}


def _fields(cls) -> list[dataclasses.Field]:
  return [f for f in dataclasses.fields(cls) if f.init and f.name not in ('parent', 'name')]


def defaults(name: str) -> dict:
  """{field: default} for the constructor fields of model `name` that have one ({} if unknown)."""
  cls = MODELS.get(name)
  return {f.name: f.default for f in _fields(cls) if f.default is not dataclasses.MISSING} if cls else {}


def check_kwargs(model_config) -> None:
  from jaxvision.config import ConfigError
  cls = MODELS[model_config.name]
  allowed = [f.name for f in _fields(cls)]
  for key in model_config:
    if key != 'name' and key not in allowed:
      raise ConfigError(f'model.{key} is not a field of model {model_config.name!r}; '
                        f'its fields are: {", ".join(allowed)}')


def get(model_config) -> nn.Module:
  kwargs = {k: v for k, v in model_config.to_dict().items() if k != 'name'}
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  return MODELS[model_config.name](**kwargs)
