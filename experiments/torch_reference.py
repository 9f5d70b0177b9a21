"""PyTorch references of the two benchmark workloads, for experiments/throughput.py.

Optional: used only when `torch` is importable (it is not a project
dependency). The same networks and step as keras_reference.py and the
project's families, written the way a PyTorch user writes them (NCHW,
torch.optim.Adam, eager; or `torch.compile` on the networks).

`build(config, compile_)` returns `step(images) -> float loss`, images a
float32 numpy array (B, 28, 28, 1) in [0, 1]; the step is synchronous.
"""

import torch
from torch import nn
import torch.nn.functional as F

from vaegan_jax.errors import UserError
import keras_reference  # The same config checks.  # pylint: disable=g-bad-import-order


def _scale(width, mult):
  return max(1, int(round(width * mult)))


def _adam(params, cfg):
  return torch.optim.Adam(params, lr=cfg.learning_rate, betas=(cfg.b1, cfg.b2), eps=1e-7)


class Generator(nn.Module):
  """models/gan.py's G at 28x28 (BN after the reshape, over channels)."""

  def __init__(self, config):
    super().__init__()
    m = config.model
    self.top, mid, low = (_scale(w, m.g_width_mult) for w in (256, 128, 64))
    self.slope = m.leaky_slope
    bn = lambda c: nn.BatchNorm2d(c, momentum=0.01, eps=1e-3)  # pylint: disable=unnecessary-lambda-assignment
    self.dense = nn.Linear(m.latent_dim, 7 * 7 * self.top, bias=False)
    self.bn0, self.bn1, self.bn2 = bn(self.top), bn(mid), bn(low)
    self.up1 = nn.ConvTranspose2d(self.top, mid, 5, stride=1, padding=2, bias=False)
    self.up2 = nn.ConvTranspose2d(mid, low, 5, stride=2, padding=2, output_padding=1,
                                  bias=False)
    self.up3 = nn.ConvTranspose2d(low, 1, 5, stride=2, padding=2, output_padding=1,
                                  bias=False)

  def forward(self, z):
    act = lambda x: F.leaky_relu(x, self.slope)  # pylint: disable=unnecessary-lambda-assignment
    x = self.dense(z).view(z.shape[0], self.top, 7, 7)
    x = act(self.bn0(x))
    x = act(self.bn1(self.up1(x)))
    x = act(self.bn2(self.up2(x)))
    return torch.tanh(self.up3(x))


class Discriminator(nn.Module):
  """models/gan.py's D at 28x28."""

  def __init__(self, config):
    super().__init__()
    m = config.model
    d1, d2 = (_scale(w, m.d_width_mult) for w in (64, 128))
    self.slope, self.p = m.leaky_slope, m.d_dropout
    self.conv1 = nn.Conv2d(1, d1, 5, stride=2, padding=2)
    self.conv2 = nn.Conv2d(d1, d2, 5, stride=2, padding=2)
    self.dense = nn.Linear(d2 * 7 * 7, 1)

  def forward(self, x):
    x = F.dropout(F.leaky_relu(self.conv1(x), self.slope), self.p, self.training)
    x = F.dropout(F.leaky_relu(self.conv2(x), self.slope), self.p, self.training)
    return self.dense(x.flatten(1))[:, 0]


def build_gan(config, compile_: bool):
  keras_reference.check_gan(config)
  generator, discriminator = Generator(config), Discriminator(config)
  g_opt = _adam(generator.parameters(), config.optim.g)
  d_opt = _adam(discriminator.parameters(), config.optim.d)
  g_net = torch.compile(generator) if compile_ else generator
  d_net = torch.compile(discriminator) if compile_ else discriminator
  latent = config.model.latent_dim

  def step(images):
    real = torch.tensor(images).permute(0, 3, 1, 2).contiguous() * 2.0 - 1.0
    n = real.shape[0]
    with torch.no_grad():
      fake = g_net(torch.randn(n, latent))
    logits = d_net(torch.cat([real, fake]))
    d_loss = F.softplus(-logits[:n]).mean() + F.softplus(logits[n:]).mean()
    d_opt.zero_grad(set_to_none=True)
    d_loss.backward()
    d_opt.step()
    logits = d_net(g_net(torch.randn(n, latent)))
    g_loss = F.softplus(-logits).mean()
    g_opt.zero_grad(set_to_none=True)
    g_loss.backward()  # Also fills D's grads, cleared before D's next step.
    g_opt.step()
    return d_loss.item() + g_loss.item()

  return step


class VAE(nn.Module):
  """models/vae.py at 28x28 (configs/bench/convvae28.py: the Keras example)."""

  def __init__(self, config):
    super().__init__()
    m = config.model
    k = m.get('kernel_size', 4)
    pad, out_pad = (k - 1) // 2, k % 2  # 'SAME' at stride 2, k = 3 or 4.
    self.w, dec_hidden = m.width, m.get('decoder_hidden', m.hidden)
    self.conv1 = nn.Conv2d(1, m.width, k, stride=2, padding=pad)
    self.conv2 = nn.Conv2d(m.width, 2 * m.width, k, stride=2, padding=pad)
    self.hidden = nn.Linear(7 * 7 * 2 * m.width, m.hidden)
    self.mean = nn.Linear(m.hidden, m.latent_dim)
    self.logvar = nn.Linear(m.hidden, m.latent_dim)
    self.dec_hidden = nn.Linear(m.latent_dim, dec_hidden) if dec_hidden else None
    self.dense = nn.Linear(dec_hidden or m.latent_dim, 7 * 7 * 2 * m.width)
    self.up1 = nn.ConvTranspose2d(2 * m.width, 2 * m.width, k, stride=2, padding=pad,
                                  output_padding=out_pad)
    self.up2 = nn.ConvTranspose2d(2 * m.width, m.width, k, stride=2, padding=pad,
                                  output_padding=out_pad)
    self.out = nn.ConvTranspose2d(m.width, 1, 3, padding=1)

  def forward(self, x):
    h = F.relu(self.conv2(F.relu(self.conv1(x))))
    h = F.relu(self.hidden(h.flatten(1)))
    mean, logvar = self.mean(h), self.logvar(h)
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    if self.dec_hidden is not None:
      z = F.relu(self.dec_hidden(z))
    h = F.relu(self.dense(z)).view(x.shape[0], 2 * self.w, 7, 7)
    h = F.relu(self.up2(F.relu(self.up1(h))))
    return self.out(h), mean, logvar


def build_vae(config, compile_: bool):
  keras_reference.check_vae(config)
  model = VAE(config)
  opt = _adam(model.parameters(), config.optim)
  net = torch.compile(model) if compile_ else model

  def step(images):
    x = torch.tensor(images).permute(0, 3, 1, 2).contiguous()
    logits, mean, logvar = net(x)
    recon = -F.binary_cross_entropy_with_logits(logits, x, reduction='none').sum((1, 2, 3))
    kl = 0.5 * (logvar.exp() + mean.square() - 1.0 - logvar).sum(1)
    loss = -(recon - kl).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()

  return step


def build(config, compile_: bool = False):
  """The PyTorch step for `config`'s workload (GAN -> dcgan28, VAE -> convvae28)."""
  if config.model.family == 'gan':
    return build_gan(config, compile_)
  if config.model.family == 'vae':
    return build_vae(config, compile_)
  raise UserError(f'No PyTorch reference for model family {config.model.family!r}; '
                  'use --reference=none.')
