"""Weights on demand (vaegan_jax/metrics/weights.py), served by a loopback
HTTP server this test starts on 127.0.0.1: a checked download, one conversion,
later runs offline; every failure one line that leaves nothing half-written."""

import contextlib
import errno
import glob
import hashlib
import http.server
import os
import socket
import stat
import threading

import numpy as np
import pytest

from vaegan_jax.errors import UserError
from vaegan_jax.metrics import inception
from vaegan_jax.metrics import weights

GOLDEN_DIR = os.path.join(os.path.dirname(__file__), 'golden')
PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, np.uint8).tobytes()


def _stub_convert(pth, out, sha256):
  """Stands in for a real converter (tested in test_inception / test_dinov2):
  writes the payload as an .npz through a temporary file, as they do."""
  with open(pth, 'rb') as f:
    data = f.read()
  assert hashlib.sha256(data).hexdigest() == sha256
  np.savez(out + '.tmp.npz', payload=np.frombuffer(data, np.uint8))
  os.replace(out + '.tmp.npz', out)


def _entry(**kw):
  base = dict(name='stub', title='stub net', file='stub-1234.pth', url='http://unused/',
              sha256=hashlib.sha256(PAYLOAD).hexdigest(), size=len(PAYLOAD),
              npz='stub.npz', converter=_stub_convert, flag='--stub_weights',
              env='VAEGAN_JAX_STUB')
  base.update(kw)
  return weights.Entry(**base)


class _Handler(http.server.BaseHTTPRequestHandler):
  files = {}      # path -> (bytes to send, Content-Length to announce)
  requests = []

  def do_GET(self):  # pylint: disable=invalid-name
    type(self).requests.append(self.path)
    if self.path not in self.files:
      self.send_error(404)
      return
    body, length = self.files[self.path]
    self.send_response(200)
    self.send_header('Content-Length', str(length))
    self.end_headers()
    self.wfile.write(body)
    self.wfile.flush()
    self.close_connection = True

  def log_message(self, *args):
    pass


@pytest.fixture
def server():
  srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
  _Handler.requests = []
  _Handler.files = {
      '/good/stub-1234.pth': (PAYLOAD, len(PAYLOAD)),
      '/wrong/stub-1234.pth': (PAYLOAD[::-1], len(PAYLOAD)),
      '/truncated/stub-1234.pth': (PAYLOAD[:len(PAYLOAD) // 3], len(PAYLOAD)),
  }
  thread = threading.Thread(target=srv.serve_forever, daemon=True)
  thread.start()
  yield f'http://127.0.0.1:{srv.server_address[1]}'
  srv.shutdown()
  srv.server_close()


def _refused_url():
  with contextlib.closing(socket.socket()) as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  return f'http://127.0.0.1:{port}/stub-1234.pth'  # Nobody listens there now.


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
  for var in ('VAEGAN_JAX_STUB', weights.MIRROR_ENV, weights.CACHE_ENV):
    monkeypatch.delenv(var, raising=False)


def _files(folder):
  return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_registry_pins_full_hashes_and_official_urls():
  for entry in weights.REGISTRY.values():
    assert len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0, entry.name
    assert entry.url.startswith('https://') and entry.url.endswith('/' + entry.file)
    assert entry.size > 0 and entry.flag.startswith('--') and entry.env
  inc = weights.get('inception')
  assert inc.sha256.startswith(inception.TORCH_SHA256_PREFIX) and inc.file == inception.TORCH_FILE
  assert inc.env == inception.ENV_VAR and inc.flag == '--inception_weights'
  with pytest.raises(UserError, match='Unknown weights'):
    weights.get('vgg')


def test_download_converts_once_then_runs_offline(server, tmp_path):
  entry, cache, echoed = _entry(), str(tmp_path / 'cache'), []
  path = weights.ensure(entry, url=f'{server}/good/stub-1234.pth', cache=cache,
                        echo=echoed.append)
  assert path == os.path.join(cache, 'stub.npz')
  with np.load(path) as data:
    assert data['payload'].tobytes() == PAYLOAD
  assert _files(cache) == ['stub-1234.pth', 'stub.npz']  # Nothing else left behind.
  assert _Handler.requests == ['/good/stub-1234.pth']
  assert any('Downloading' in m for m in echoed) and any('Converting' in m for m in echoed)
  # Offline: the URL now refuses connections; the cached .npz is used, no request.
  again = weights.ensure(entry, url=_refused_url(), cache=cache, echo=echoed.append)
  assert again == path and _Handler.requests == ['/good/stub-1234.pth']
  # The .pth alone (a removed .npz) is converted again without the network.
  os.remove(path)
  assert weights.ensure(entry, url=_refused_url(), cache=cache, echo=print) == path
  assert _files(cache) == ['stub-1234.pth', 'stub.npz']


def test_cache_env_and_mirror_env(server, tmp_path, monkeypatch):
  monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / 'c'))
  monkeypatch.setenv(weights.MIRROR_ENV, f'{server}/good/')
  entry = _entry()
  assert weights.source_url(entry) == f'{server}/good/stub-1234.pth'
  assert weights.ensure(entry, echo=lambda m: None) == str(tmp_path / 'c' / 'stub.npz')


@pytest.mark.parametrize('kind', ['wrong', 'truncated', 'refused', 'missing'])
def test_failed_downloads_are_one_line_and_leave_nothing(server, tmp_path, kind):
  entry, cache = _entry(), str(tmp_path / 'cache')
  url = _refused_url() if kind == 'refused' else f'{server}/{kind}/stub-1234.pth'
  with pytest.raises(UserError) as e:
    weights.ensure(entry, url=url, cache=cache, echo=lambda m: None)
  msg = str(e.value)
  assert '\n' not in msg and url in msg and entry.sha256 in msg
  assert '--stub_weights=PATH' in msg and '$VAEGAN_JAX_STUB' in msg
  assert {'wrong': 'has sha256', 'truncated': 'incomplete', 'refused': 'Cannot download',
          'missing': 'Not Found'}[kind] in msg
  assert _files(cache) == []


def test_unwritable_cache_is_one_line(server, tmp_path, monkeypatch):
  entry, url = _entry(), f'{server}/good/stub-1234.pth'
  blocker = tmp_path / 'a_file'
  blocker.write_text('x')  # A cache path below a file: cannot be created.
  with pytest.raises(UserError, match=r'Cannot write the stub net weights into .*'
                                      r'\$VAEGAN_JAX_CACHE') as e:
    weights.ensure(entry, url=url, cache=str(blocker / 'cache'), echo=lambda m: None)
  assert entry.sha256 in str(e.value) and url in str(e.value)
  # A read-only cache folder (chmod; root ignores it, so the refusal the
  # kernel gives a normal user is also raised directly).
  ro = tmp_path / 'ro'
  ro.mkdir()
  ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
  if os.access(ro, os.W_OK):
    def refuse(*args, **kwargs):
      raise PermissionError(errno.EACCES, 'Permission denied')
    monkeypatch.setattr(weights.tempfile, 'mkstemp', refuse)
  with pytest.raises(UserError, match='Cannot write .*Permission denied'):
    weights.ensure(entry, url=url, cache=str(ro), echo=lambda m: None)
  ro.chmod(stat.S_IRWXU)
  assert _files(ro) == [] and _Handler.requests == []


def test_a_file_at_hand_is_used_and_a_pth_converted(tmp_path, monkeypatch):
  entry, cache = _entry(), str(tmp_path / 'cache')
  pth = tmp_path / 'mine' / 'stub-1234.pth'
  pth.parent.mkdir()
  pth.write_bytes(PAYLOAD)
  out = weights.ensure(entry, str(pth), url=_refused_url(), cache=cache, echo=lambda m: None)
  assert out == os.path.join(cache, 'stub.npz') and _files(cache) == ['stub.npz']
  monkeypatch.setenv('VAEGAN_JAX_STUB', out)  # An .npz is taken as it is.
  assert weights.ensure(entry, url=_refused_url(), cache=str(tmp_path / 'x')) == out
  with pytest.raises(UserError, match='does not exist .*--stub_weights'):
    weights.ensure(entry, str(tmp_path / 'nope.npz'), cache=cache)


def test_inception_entry_downloads_and_converts_with_the_real_converter(server, tmp_path):
  """The registry's Inception converter (the restricted reader) on a small
  torch-written state dict served like pytorch-fid's file."""
  (tiny,) = glob.glob(os.path.join(GOLDEN_DIR, 'tiny_inception_zip-*.pth'))
  with open(tiny, 'rb') as f:
    body = f.read()
  _Handler.files['/fid/tiny.pth'] = (body, len(body))
  entry = weights.Entry(**{**weights.INCEPTION.__dict__, 'sha256': hashlib.sha256(body).hexdigest(),
                           'size': len(body), 'file': 'tiny.pth'})
  cache = str(tmp_path / 'cache')
  out = weights.ensure(entry, url=f'{server}/fid/tiny.pth', cache=cache, echo=lambda m: None)
  with np.load(out, allow_pickle=False) as data:
    assert set(inception.torch_shapes()) <= set(data.files)
    assert str(data['__source_sha256__']) == entry.sha256
  assert _files(cache) == sorted(['tiny.pth', entry.npz])


def test_inception_load_offline_names_url_hash_and_flag(tmp_path, monkeypatch):
  monkeypatch.delenv(inception.ENV_VAR, raising=False)
  monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / 'cache'))
  monkeypatch.setenv(weights.MIRROR_ENV, _refused_url().rsplit('/', 1)[0])
  with pytest.raises(UserError) as e:
    inception.load()
  msg = str(e.value)
  assert weights.INCEPTION.sha256 in msg and '--inception_weights=PATH' in msg
  assert inception.ENV_VAR in msg and inception.TORCH_FILE in msg
  assert _files(str(tmp_path / 'cache')) == []


def test_generic_converter_checks_hash_and_keys(tmp_path):
  from vaegan_jax.metrics import convert_inception  # pylint: disable=g-import-not-at-top
  (tiny,) = glob.glob(os.path.join(GOLDEN_DIR, 'tiny_inception_zip-*.pth'))
  digest = weights.file_sha256(tiny)
  out = str(tmp_path / 'x.npz')
  with pytest.raises(UserError, match='has sha256 .*not the Net weights'):
    convert_inception.convert_state_dict(tiny, out, 'f' * 64, 'Net')
  keys = set(inception.torch_shapes())
  with pytest.raises(UserError, match='not the Net state dict: 1 keys missing'):
    convert_inception.convert_state_dict(tiny, out, digest, 'Net', keys | {'extra.weight'})
  assert not os.path.exists(out)
  info = convert_inception.convert_state_dict(tiny, out, digest, 'Net', keys - {'fc.bias'},
                                              optional_keys=('fc.bias',))
  with np.load(out) as data:
    assert 'fc.bias' not in data.files and str(data['__source_sha256__']) == digest
  assert info['num_tensors'] == len(keys) - 1
