"""PyTorch twins of six jaxvision models and their training steps, for step_throughput.py.

Each model mirrors its jaxvision module layer by layer at the config it is built from (kernel
sizes, strides, padding, BatchNorm momentum/eps, dropout rates, activations, pooling, heads)
with the same parameter count; losses and optimizers mirror jaxvision/tasks/*.py and
jaxvision/optim.py. Torch is NCHW, so images go in as [B, C, H, W] and flattening orders
differ from jaxvision's NHWC; shapes, FLOPs and parameter counts do not.

Differences that change no shape, FLOP count or parameter count:
  * 'SAME' padding of a stride-2 conv: XLA pads (0, 1) on a 28 or 14 pixel side, torch's
    `padding=1` pads (1, 1); both give the same output size.
  * depth_to_space orders channels (r1, r2, c), torch's PixelShuffle (c, r1, r2).
  * LSTM: flax's OptimizedLSTMCell has one bias of 4h per cell, torch's nn.LSTM two (b_ih and
    b_hh). To keep the fused nn.LSTM kernel *and* the parameter count, each layer is an
    nn.LSTM(bias=False) fed [x, 1]: the weight column of the constant 1 is the one bias.
  * flax's BatchNorm `momentum` m is torch's `1 - m`; eps 1e-5 in both. flax's LayerNorm
    eps is 1e-6 (set here), nn.gelu is the tanh approximation (set here).

API used by benchmarks/step_throughput.py and tests/test_benchmarks.py:
    model = build(name, config)            # nn.Module (for dcgan: .generator, .discriminator)
    step = TrainStep(name, config, model, compile=False)
    metrics = step(batch)                  # batch: {'image': [B, C, H, W] f32, 'label': [B] i64}
    forward_shapes(name, model, x)         # the output shapes the test compares with jaxvision
"""

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NAMES = ('cnn', 'resnet', 'vit', 'lstm', 'dcgan', 'conv_vae')
CONFIGS = {
  'cnn': 'cnn.py',
  'resnet': 'resnet.py',
  'vit': 'vit.py',
  'lstm': 'lstm.py',
  'dcgan': 'dcgan.py:plain',
  'conv_vae': 'conv_vae.py',
}  # file[:preset]; the twins are unconditional


def config_file(name: str) -> tuple[str, str]:
  """(file under configs/, preset) of a model's jaxvision config."""
  file, _, preset = CONFIGS[name].partition(':')
  return file, preset


def _momentum(flax_momentum: float) -> float:
  return 1.0 - float(flax_momentum)


# --------------------------------------------------------------------- CNN


class CNN(nn.Module):
  """jaxvision/models/cnn.py, variant 'bn_dropout': [conv3x3 VALID (no bias) -> BN -> relu] per
  feature, 2x2 max-pool, dropout 0.25, fc hidden (no bias) -> BN -> relu, dropout 0.5, fc."""

  def __init__(
    self,
    num_classes=10,
    features=(32, 64),
    hidden=128,
    dropout=(0.25, 0.5),
    bn_momentum=0.9,
    variant='bn_dropout',
    image_shape=(28, 28, 1),
  ):
    super().__init__()
    bn = variant == 'bn_dropout'
    h, w, c = image_shape
    layers = []
    for f in features:
      layers += [nn.Conv2d(c, f, 3, padding=0, bias=not bn)]
      if bn:
        layers += [nn.BatchNorm2d(f, eps=1e-5, momentum=_momentum(bn_momentum))]
      layers += [nn.ReLU()]
      c, h, w = f, h - 2, w - 2
    layers += [nn.MaxPool2d(2)]
    if bn:
      layers += [nn.Dropout(dropout[0])]
    layers += [nn.Flatten(), nn.Linear(c * (h // 2) * (w // 2), hidden, bias=not bn)]
    if bn:
      layers += [nn.BatchNorm1d(hidden, eps=1e-5, momentum=_momentum(bn_momentum))]
    layers += [nn.ReLU()]
    if bn:
      layers += [nn.Dropout(dropout[1])]
    layers += [nn.Linear(hidden, num_classes)]
    self.net = nn.Sequential(*layers)

  def forward(self, x):
    return self.net(x)


# ------------------------------------------------------------------ ResNet


class BasicBlock(nn.Module):
  def __init__(self, cin, features, stride, momentum):
    super().__init__()
    bn = lambda c: nn.BatchNorm2d(c, eps=1e-5, momentum=momentum)
    self.conv1 = nn.Conv2d(cin, features, 3, stride, 1, bias=False)
    self.bn1 = bn(features)
    self.conv2 = nn.Conv2d(features, features, 3, 1, 1, bias=False)
    self.bn2 = bn(features)
    nn.init.zeros_(self.bn2.weight)  # flax: scale_init=zeros on the block's last BatchNorm
    self.proj = None
    if stride != 1 or cin != features:
      self.proj = nn.Sequential(nn.Conv2d(cin, features, 1, stride, 0, bias=False), bn(features))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu((x if self.proj is None else self.proj(x)) + y)


class ResNet(nn.Module):
  """jaxvision/models/resnet.py with block='basic', stem='cifar' (ResNet-20 at (3, 3, 3), 16)."""

  def __init__(
    self,
    num_classes=10,
    stage_sizes=(3, 3, 3),
    block='basic',
    width=16,
    stem='cifar',
    bn_momentum=0.9,
    image_shape=(28, 28, 1),
  ):
    super().__init__()
    if block != 'basic' or stem != 'cifar':
      raise NotImplementedError(
        'the torch twin covers block=basic, stem=cifar (the default config)'
      )
    m = _momentum(bn_momentum)
    self.stem = nn.Sequential(
      nn.Conv2d(image_shape[-1], width, 3, 1, 1, bias=False),
      nn.BatchNorm2d(width, eps=1e-5, momentum=m),
      nn.ReLU(),
    )
    blocks, cin = [], width
    for i, n in enumerate(stage_sizes):
      for j in range(n):
        f = width * 2**i
        blocks.append(BasicBlock(cin, f, 2 if i > 0 and j == 0 else 1, m))
        cin = f
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(cin, num_classes)

  def forward(self, x):
    return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


# --------------------------------------------------------------------- ViT


class EncoderBlock(nn.Module):
  def __init__(self, dim, heads, mlp_dim, dropout):
    super().__init__()
    self.heads = heads
    self.ln1 = nn.LayerNorm(dim, eps=1e-6)
    self.qkv = nn.Linear(dim, 3 * dim)  # flax: query, key, value DenseGeneral with biases
    self.out = nn.Linear(dim, dim)
    self.ln2 = nn.LayerNorm(dim, eps=1e-6)
    self.fc1 = nn.Linear(dim, mlp_dim)
    self.fc2 = nn.Linear(mlp_dim, dim)
    self.drop = nn.Dropout(dropout)

  def forward(self, x):
    b, n, d = x.shape
    q, k, v = (
      self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
    )
    y = F.scaled_dot_product_attention(q, k, v)  # no dropout on the attention weights
    x = x + self.drop(self.out(y.transpose(1, 2).reshape(b, n, d)))
    y = self.fc2(self.drop(F.gelu(self.fc1(self.ln2(x)), approximate='tanh')))
    return x + self.drop(y)


class ViT(nn.Module):
  """jaxvision/models/vit.py: patchify + linear embedding, class token, learned positions,
  pre-norm blocks, final LayerNorm, zero-initialised head on the class token."""

  def __init__(
    self,
    num_classes=10,
    patch=7,
    dim=96,
    depth=6,
    heads=4,
    mlp_dim=192,
    dropout=0.0,
    pool='cls',
    image_shape=(28, 28, 1),
  ):
    super().__init__()
    h, w, c = image_shape
    self.patch, self.pool = patch, pool
    self.embed = nn.Linear(patch * patch * c, dim)
    tokens = (h // patch) * (w // patch) + (pool == 'cls')
    self.cls = nn.Parameter(torch.zeros(1, 1, dim)) if pool == 'cls' else None
    self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
    self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, mlp_dim, dropout) for _ in range(depth)])
    self.norm = nn.LayerNorm(dim, eps=1e-6)
    self.head = nn.Linear(dim, num_classes)
    nn.init.zeros_(self.head.weight)

  def forward(self, x):
    b, c, h, w = x.shape
    p = self.patch
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p * c)
    t = self.embed(x)
    if self.cls is not None:
      t = torch.cat([self.cls.expand(b, -1, -1), t], dim=1)
    t = self.norm(self.blocks(t + self.pos))
    return self.head(t[:, 0] if self.pool == 'cls' else t.mean(dim=1))


# -------------------------------------------------------------------- LSTM


class LSTMClassifier(nn.Module):
  """jaxvision/models/lstm.py on images: H time steps of W*C pixels, `layers` stacked
  (bi)LSTMs with dropout between them, the head on the last layer's final hidden state(s)."""

  def __init__(
    self,
    num_classes=10,
    input_shape=(28, 28, 1),
    hidden=128,
    layers=1,
    bidirectional=False,
    dropout=0.0,
    vocab_size=0,
    embed_dim=128,
  ):
    super().__init__()
    if vocab_size:
      raise NotImplementedError('the torch twin covers image rows (vocab_size=0)')
    dirs = 2 if bidirectional else 1
    size = input_shape[1] * input_shape[2]
    rnns = []
    for _ in range(layers):  # [x, 1] in: the weight column of the 1 is flax's single bias
      rnns.append(
        nn.LSTM(size + 1, hidden, batch_first=True, bidirectional=bidirectional, bias=False)
      )
      size = dirs * hidden
    self.rnns = nn.ModuleList(rnns)
    self.drop = nn.Dropout(dropout)
    self.head = nn.Linear(dirs * hidden, num_classes)

  def forward(self, x):
    b, c, h, w = x.shape
    x = x.permute(0, 2, 3, 1).reshape(b, h, w * c)  # rows as time steps
    for i, rnn in enumerate(self.rnns):
      x, (h_n, _) = rnn(torch.cat([x, x.new_ones(b, h, 1)], dim=-1))
      if i + 1 < len(self.rnns):
        x = self.drop(x)
    final = torch.cat(list(h_n), dim=-1)  # [forward, backward] final hidden states
    return self.head(self.drop(final))


# ------------------------------------------------------------------- DCGAN


def dcgan_geometry(image_shape):
  h = image_shape[0]
  base = 7 if h % 7 == 0 else 4
  return base, round(math.log2(max(h // base, 1)))


class DCGANGenerator(nn.Module):
  """dense (no bias) -> base x base x 4f -> BN -> relu, then sub-pixel upsampling convs
  (3x3 conv to 4x the channels, depth-to-space) with BN + relu, the last one to the image
  channels with a bias, tanh."""

  def __init__(self, latents, features, bn_momentum, image_shape):
    super().__init__()
    base, ups = dcgan_geometry(image_shape)
    m = _momentum(bn_momentum)
    self.base, self.c0 = base, features * 2**ups
    self.dense = nn.Linear(latents, base * base * self.c0, bias=False)
    self.norm0 = nn.BatchNorm2d(self.c0, eps=1e-5, momentum=m)
    layers, c = [], self.c0
    for i in range(ups - 1):
      f = features * 2 ** (ups - 1 - i)
      layers += [
        nn.Conv2d(c, 4 * f, 3, 1, 1, bias=False),
        nn.PixelShuffle(2),
        nn.BatchNorm2d(f, eps=1e-5, momentum=m),
        nn.ReLU(),
      ]
      c = f
    layers += [nn.Conv2d(c, 4 * image_shape[-1], 3, 1, 1, bias=True), nn.PixelShuffle(2), nn.Tanh()]
    self.up = nn.Sequential(*layers)

  def forward(self, z):
    h = self.dense(z).view(z.shape[0], self.c0, self.base, self.base)
    return self.up(F.relu(self.norm0(h)))


class DCGANDiscriminator(nn.Module):
  """stride-2 4x4 'SAME' convs (with bias) + LeakyReLU 0.2 (+ dropout), flatten, dense to 1."""

  def __init__(self, features, dropout, image_shape):
    super().__init__()
    h, _, c = image_shape
    _, ups = dcgan_geometry(image_shape)
    layers = []
    for i in range(ups):
      f = features * 2**i
      layers += [nn.Conv2d(c, f, 4, 2, 1), nn.LeakyReLU(0.2)]
      if dropout:
        layers += [nn.Dropout(dropout)]
      c, h = f, h // 2
    self.convs = nn.Sequential(*layers)
    self.out = nn.Linear(c * h * h, 1)

  def forward(self, x):
    return self.out(self.convs(x).flatten(1))[:, 0]


class DCGAN(nn.Module):
  def __init__(
    self,
    latents=100,
    g_features=32,
    d_features=64,
    d_dropout=0.0,
    num_classes=0,
    bn_momentum=0.9,
    upsample='subpixel',
    image_shape=(28, 28, 1),
    **unused,
  ):
    super().__init__()
    if num_classes or upsample != 'subpixel':
      raise NotImplementedError('the torch twin covers the unconditional sub-pixel DCGAN')
    self.latents = latents
    self.generator = DCGANGenerator(latents, g_features, bn_momentum, image_shape)
    self.discriminator = DCGANDiscriminator(d_features, d_dropout, image_shape)

  def forward(self, z):
    return self.discriminator(self.generator(z))


# --------------------------------------------------------------- conv VAE


class ConvVAE(nn.Module):
  """jaxvision/models/vae.py ConvVAE: stride-2 3x3 convs (+ relu), dense hidden, mean/logvar;
  decoder dense hidden, dense to (H/4, W/4, features[-1]), sub-pixel convs, per-pixel bias."""

  def __init__(self, latents=32, features=(32, 64), hidden=512, image_shape=(28, 28, 1), outputs=1):
    super().__init__()
    h, w, c = image_shape
    down = 2 ** len(features)
    self.latents, self.low = latents, (features[-1], h // down, w // down)
    convs, cin = [], c
    for f in features:
      convs.append(nn.Conv2d(cin, f, 3, 2, 1))
      cin = f
    self.enc_convs = nn.ModuleList(convs)
    flat = features[-1] * (h // down) * (w // down)
    self.enc_hidden = nn.Linear(flat, hidden) if hidden else None
    self.enc_mean = nn.Linear(hidden or flat, latents)
    self.enc_logvar = nn.Linear(hidden or flat, latents)
    self.dec_hidden = nn.Linear(latents, hidden) if hidden else None
    self.dec_in = nn.Linear(hidden or latents, flat)
    outs = list(features[:-1][::-1]) + [c * outputs]
    convs, cin = [], features[-1]
    for f in outs:
      convs.append(nn.Conv2d(cin, 4 * f, 3, 1, 1))
      cin = f
    self.dec_convs = nn.ModuleList(convs)
    self.pixel_bias = nn.Parameter(torch.zeros(c * outputs, h, w))

  def encode(self, x):
    for conv in self.enc_convs:
      x = F.relu(conv(x))
    x = x.flatten(1)
    if self.enc_hidden is not None:
      x = F.relu(self.enc_hidden(x))
    return self.enc_mean(x), self.enc_logvar(x)

  def decode(self, z):
    x = F.relu(self.dec_hidden(z)) if self.dec_hidden is not None else z
    x = F.relu(self.dec_in(x)).view(z.shape[0], *self.low)
    for i, conv in enumerate(self.dec_convs):
      x = F.pixel_shuffle(conv(x), 2)
      if i < len(self.dec_convs) - 1:
        x = F.relu(x)
    return x + self.pixel_bias

  def forward(self, x):
    mean, logvar = self.encode(x)
    return self.decode(mean), mean, logvar


# ------------------------------------------------------------------ build


# Model fields the twins implement at one value only (the jaxvision default): the public-weight
# variants (torchvision's padding, frozen BatchNorm, exact GELU) have no twin here.
_DEFAULT_ONLY = {'padding': 'same', 'frozen_batchnorm': False, 'gelu': 'tanh'}


def _model_kwargs(config) -> dict:
  # conv_impl and remat change how jax computes the model, not the model.
  skip = ('name', 'conv_impl', 'remat', *_DEFAULT_ONLY)
  model = config.model.to_dict()
  for key, value in _DEFAULT_ONLY.items():
    if model.get(key, value) != value:
      raise ValueError(f'the torch twins implement model.{key}={value!r} only, not {model[key]!r}')
  kw = {k: v for k, v in model.items() if k not in skip}
  return {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}


def build(name: str, config, image_shape=(28, 28, 1)) -> nn.Module:
  """The torch twin of `config.model` (config: the jaxvision ConfigDict of configs/<name>.py)."""
  kw = _model_kwargs(config)
  if name == 'cnn':
    if config.model.name != 'cnn':
      raise ValueError(config.model.name)
    return CNN(image_shape=image_shape, **kw)
  if name == 'resnet':
    return ResNet(image_shape=image_shape, **kw)
  if name == 'vit':
    return ViT(image_shape=image_shape, **kw)
  if name == 'lstm':
    return LSTMClassifier(**kw)
  if name == 'dcgan':
    kw.pop('conditioning', None)
    return DCGAN(image_shape=image_shape, **kw)
  if name == 'conv_vae':
    return ConvVAE(
      image_shape=image_shape, outputs=2 if config.loss.likelihood == 'logistic' else 1, **kw
    )
  raise ValueError(f'unknown model {name!r}; use one of {NAMES}')


def num_params(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def forward_shapes(name: str, model: nn.Module, x: torch.Tensor) -> dict:
  """Output shapes in eval mode, NHWC for images (as jaxvision gives them)."""
  model.eval()
  nhwc = lambda t: tuple(t.permute(0, 2, 3, 1).shape)
  if name == 'dcgan':
    z = torch.zeros(x.shape[0], model.latents)
    return {
      'generate': nhwc(model.generator(z)),
      'discriminate': tuple(model.discriminator(x).shape),
    }
  if name == 'conv_vae':
    mean, logvar = model.encode(x)
    return {
      'mean': tuple(mean.shape),
      'logvar': tuple(logvar.shape),
      'decode': nhwc(model.decode(mean)),
    }
  return {'logits': tuple(model(x).shape)}


# ---------------------------------------------------------- optimizers


def lr_table(optim_config, steps: int) -> np.ndarray:
  """jaxvision's learning-rate schedule (optax, from jaxvision/optim.py) as numbers per step."""
  import jax

  from jaxvision import optim

  sched = optim.schedule(optim_config, steps)
  return np.asarray(jax.jit(jax.vmap(sched))(np.arange(steps + 1)), np.float64)


def make_optimizer(optim_config, params, lr: float) -> torch.optim.Optimizer:
  """jaxvision/optim.py's optimizer (optax) in torch. Fused CPU kernels where torch has them."""
  c = optim_config
  betas = (float(c.b1), float(c.b2))
  kw = {'fused': True}
  if c.name == 'adam':
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=1e-8, **kw)
  if c.name == 'adamw':  # optax.adamw == torch AdamW: decoupled decay lr * wd * p on every param
    return torch.optim.AdamW(
      params, lr=lr, betas=betas, eps=1e-8, weight_decay=float(c.weight_decay), **kw
    )
  if c.name == 'sgd':  # optax: add_decayed_weights (coupled L2) before sgd
    return torch.optim.SGD(params, lr=lr, weight_decay=float(c.weight_decay), **kw)
  if c.name == 'momentum':
    return torch.optim.SGD(
      params,
      lr=lr,
      momentum=float(c.momentum),
      nesterov=True,
      weight_decay=float(c.weight_decay),
      **kw,
    )
  raise ValueError(f'optim.name={c.name!r}')


def random_shift(x: torch.Tensor, shift: int, fill: float) -> torch.Tensor:
  """jaxvision/data/augment.py random_shift: pad by `shift` with `fill`, crop back at a random
  offset per image (NCHW)."""
  n, c, h, w = x.shape
  p = F.pad(x, (shift, shift, shift, shift), value=fill)
  arange = lambda k: torch.arange(k, device=x.device)
  off = torch.randint(0, 2 * shift + 1, (n, 2), device=x.device)
  rows = (off[:, 0:1] + arange(h))[:, None, :, None]
  cols = (off[:, 1:2] + arange(w))[:, None, None, :]
  return p[arange(n)[:, None, None, None], arange(c)[None, :, None, None], rows, cols]


# ------------------------------------------------------------ train steps


def _classification_loss(model, opts):
  def loss_fn(x, y):
    if opts['augment'] == 'shift':
      x = random_shift(x, opts['shift'], opts['fill'])
    elif opts['augment'] != 'none':
      raise NotImplementedError(f'augment={opts["augment"]!r}')
    logits = model(x)
    loss = F.cross_entropy(logits, y, label_smoothing=opts['label_smoothing'])
    return loss, (logits.argmax(-1) == y).float().mean()

  return loss_fn


def _vae_loss(model, beta: float):
  def loss_fn(x):
    xb = (torch.rand_like(x) < x).float()  # dynamic binarisation
    eps = torch.randn(x.shape[0], model.latents, device=x.device)
    mean, logvar = model.encode(xb)
    out = model.decode(mean + torch.exp(0.5 * logvar) * eps)
    recon = F.binary_cross_entropy_with_logits(out, xb, reduction='none').sum(dim=(1, 2, 3))
    kl = 0.5 * torch.sum(torch.exp(logvar) + mean**2 - 1.0 - logvar, dim=-1)
    return torch.mean(recon + beta * kl), torch.mean(recon + kl)

  return loss_fn


def _gan_losses(model):
  g, d = model.generator, model.discriminator
  device = next(g.parameters()).device  # explicit: torch.compile ignores the default device

  def d_loss_fn(real):
    n = real.shape[0]
    with torch.no_grad():  # fakes from the current G (train-mode BatchNorm), no gradient into G
      fake = g(torch.randn(n, model.latents, device=real.device))
    logits = d(torch.cat([real, fake]))  # D sees [real; fake] in one batch, as jaxvision's does
    loss = F.softplus(-logits[:n]).mean() + F.softplus(logits[n:]).mean()
    return loss, logits

  def g_loss_fn(n: int):
    fake = g(torch.randn(n, model.latents, device=device))
    return F.softplus(-d(fake)).mean()  # non-saturating -log D(G(z))

  return d_loss_fn, g_loss_fn


class TrainStep:
  """One training step of a torch twin: forward, backward, optimizer update (for dcgan one D
  update then one G update through the updated D, plus the EMA of G). `compile=True` wraps the
  forward + loss functions in torch.compile (backward compiled by AOTAutograd); optimizers run
  eagerly (fused kernels) either way. `bf16=True` runs the forward + loss functions under
  `torch.autocast(bfloat16)` (float32 parameters, gradients and optimizer: torch's mixed
  precision, the counterpart of jaxvision's `config.dtype='bfloat16'`)."""

  def __init__(
    self, name: str, config, model: nn.Module, compile: bool = False, bf16: bool = False
  ):
    self.name, self.model, self.step = name, model, 0
    device = next(model.parameters()).device.type
    self.autocast = (
      (lambda: torch.autocast(device, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    )
    model.train()
    self.lrs = lr_table(config.optim, int(config.train.steps))
    self.clip = float(config.optim.grad_clip)
    wrap = torch.compile if compile else (lambda f: f)
    if name == 'dcgan':
      self.d_loss, self.g_loss = (wrap(f) for f in _gan_losses(model))
      g_lr, d_lr = (float(config.gan[k] or config.optim.lr) for k in ('g_lr', 'd_lr'))
      self.g_params = list(model.generator.parameters())
      self.d_params = list(model.discriminator.parameters())
      self.g_opt = make_optimizer(config.optim, self.g_params, g_lr)
      self.d_opt = make_optimizer(config.optim, self.d_params, d_lr)
      self.ema = [p.detach().clone() for p in self.g_params]
      self.ema_decay = float(config.gan.ema_decay)
      if config.gan.loss != 'bce' or config.gan.d_steps != 1 or config.optim.schedule != 'constant':
        raise NotImplementedError('the torch DCGAN step covers bce, d_steps=1, constant lr')
    elif name == 'conv_vae':
      if config.loss.likelihood != 'bernoulli' or config.loss.kl_warmup_steps:
        raise NotImplementedError(
          'the torch VAE step covers the bernoulli likelihood, no KL warm-up'
        )
      self.loss = wrap(_vae_loss(model, float(config.loss.beta)))
      self.params = list(model.parameters())
      self.opt = make_optimizer(config.optim, self.params, float(self.lrs[0]))
    else:
      opts = {
        'augment': config.data.augment,
        'shift': int(config.data.shift),
        'fill': -1.0 if config.data.scale == 'minus_one_one' else 0.0,
        'label_smoothing': float(config.loss.label_smoothing),
      }
      self.loss = wrap(_classification_loss(model, opts))
      self.params = list(model.parameters())
      self.opt = make_optimizer(config.optim, self.params, float(self.lrs[0]))

  def _update(self, opt, params, loss):
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = (
      torch.nn.utils.clip_grad_norm_(params, self.clip, foreach=True)
      if self.clip
      else torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    )
    opt.step()
    return grad_norm

  def __call__(self, batch: dict) -> dict:
    lr = float(self.lrs[min(self.step, len(self.lrs) - 1)])
    self.step += 1
    x = batch['image']
    if self.name == 'dcgan':
      with self.autocast():
        d_loss, logits = self.d_loss(x)
      d_norm = self._update(self.d_opt, self.d_params, d_loss)
      with self.autocast():
        g_loss = self.g_loss(x.shape[0])
      # Gradients into G only: D's weight gradients are not computed (jax never forms them).
      grads = torch.autograd.grad(g_loss, self.g_params)
      for p, gr in zip(self.g_params, grads):
        p.grad = gr
      g_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(gr) for gr in grads]))
      self.g_opt.step()
      with torch.no_grad():
        torch._foreach_lerp_(self.ema, self.g_params, 1.0 - self.ema_decay)
      return {
        'loss': (d_loss + g_loss).detach(),
        'd_grad_norm': d_norm,
        'g_grad_norm': g_norm,
        'd_real': torch.sigmoid(logits[: x.shape[0]]).mean().detach(),
      }
    for group in self.opt.param_groups:
      group['lr'] = lr
    if self.name == 'conv_vae':
      with self.autocast():
        loss, neg_elbo = self.loss(x)
      grad_norm = self._update(self.opt, self.params, loss)
      return {'loss': loss.detach(), 'neg_elbo': neg_elbo.detach(), 'grad_norm': grad_norm}
    with self.autocast():
      loss, accuracy = self.loss(x, batch['label'])
    grad_norm = self._update(self.opt, self.params, loss)
    return {'loss': loss.detach(), 'accuracy': accuracy, 'grad_norm': grad_norm}
