"""Sequence models: the LSTM (token and row input), the CNN-RNN, and digit_sequences."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import init_variables
from jaxvision import config as config_lib
from jaxvision import experiment, train
from jaxvision.data import pipeline, sequences
from jaxvision.models import cnn_rnn, lstm


@pytest.mark.parametrize('bidirectional', [False, True])
def test_lstm_reads_image_rows(bidirectional):
  model = lstm.LSTMClassifier(
    num_classes=7, input_shape=(28, 28, 1), hidden=8, layers=2, bidirectional=bidirectional
  )
  x = jax.random.uniform(jax.random.PRNGKey(0), (3, 28, 28, 1))
  variables = init_variables(model, jax.random.PRNGKey(1), x, train=False)
  chex.assert_shape(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x), (3, 7))
  # The first LSTM reads 28 features (one row) per step: its input kernel has 28 rows.
  assert variables['params']['lstm0']['ii']['kernel'].shape == (28, 8)


@pytest.mark.parametrize('bidirectional', [False, True])
def test_lstm_token_padding_does_not_change_the_logits(bidirectional):
  model = lstm.LSTMClassifier(
    num_classes=2,
    input_shape=(12,),
    hidden=8,
    vocab_size=50,
    embed_dim=6,
    bidirectional=bidirectional,
  )
  tokens = jnp.array([[5, 9, 3, 7, 0, 0, 0, 0, 0, 0, 0, 0], [4, 4, 8, 1, 2, 6, 0, 0, 0, 0, 0, 0]])
  variables = init_variables(model, jax.random.PRNGKey(0), tokens, train=False)
  short = lstm.LSTMClassifier(
    num_classes=2,
    input_shape=(6,),
    hidden=8,
    vocab_size=50,
    embed_dim=6,
    bidirectional=bidirectional,
  )
  np.testing.assert_allclose(
    model.apply(variables, tokens, train=False),
    short.apply(variables, tokens[:, :6], train=False),
    rtol=1e-5,
    atol=1e-6,
  )
  # ... while a real token in place of padding does change them.
  other = tokens.at[0, 4].set(11)
  assert not np.allclose(
    model.apply(variables, other, train=False)[0], model.apply(variables, tokens, train=False)[0]
  )


def test_cnn_rnn_encodes_frames_in_one_batched_call():
  model = cnn_rnn.CNNRNN(
    num_classes=13, input_shape=(3, 28, 28, 1), features=(4, 8), frame_dim=16, hidden=8
  )
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 3, 28, 28, 1))
  variables = init_variables(model, jax.random.PRNGKey(1), x, train=False)
  chex.assert_shape(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x), (2, 13))
  encoder = cnn_rnn.FrameEncoder((4, 8), 16)
  enc_vars = {
    'params': variables['params']['frames'],
    'batch_stats': variables['batch_stats']['frames'],
  }
  batched = encoder.apply(enc_vars, x.reshape(6, 28, 28, 1), train=False).reshape(2, 3, 16)
  one_by_one = jnp.stack(
    [
      jnp.stack([encoder.apply(enc_vars, x[b, t][None], train=False)[0] for t in range(3)])
      for b in range(2)
    ]
  )
  np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-6)


def test_digit_sequences_labels_are_sums_of_their_frames(make_config):
  config = make_config(
    'cnn_rnn', data__seq_len=3, data__seq_train_count=500, data__seq_test_count=100
  )
  base = pipeline.load_split(make_config('cnn').data, 'train')
  split = pipeline.load_split(config.data, 'train')
  assert (split.size, split.image_shape, split.num_classes) == (500, (3, 28, 28, 1), 28)
  table = sequences.index_table('train', 3, 500, base.size)
  batch = split.read(np.arange(10, 20))
  np.testing.assert_array_equal(
    batch['image'], base.read(table[10:20].ravel())['image'].reshape(10, 3, 28, 28, 1)
  )
  np.testing.assert_array_equal(
    batch['label'], base.read(table[10:20].ravel())['label'].reshape(10, 3).sum(1)
  )
  # Fixed by (split, T, count): the same on every load, different for the other split.
  again = pipeline.load_split(config.data, 'train')
  assert again.fingerprint == split.fingerprint
  np.testing.assert_array_equal(
    again.read(np.arange(500))['label'], split.read(np.arange(500))['label']
  )
  assert not np.array_equal(sequences.index_table('test', 3, 500, base.size), table)


def test_digit_sequences_never_mix_train_and_test_images(make_config):
  """Test sequences are built from the 2,000 test images only (index % 5 == 0 of the file)."""
  config = make_config('cnn_rnn', data__seq_test_count=300)
  test_split = pipeline.load_split(config.data, 'test')
  mnist_test = pipeline.load_split(make_config('cnn').data, 'test')
  mnist_train = pipeline.load_split(make_config('cnn').data, 'train')
  frames = test_split.read(np.arange(300))['image'].reshape(-1, 28 * 28)
  test_set = {
    r.tobytes() for r in mnist_test.read(np.arange(mnist_test.size))['image'].reshape(-1, 784)
  }
  train_set = {
    r.tobytes() for r in mnist_train.read(np.arange(mnist_train.size))['image'].reshape(-1, 784)
  }
  assert all(f.tobytes() in test_set for f in frames)
  assert not any(f.tobytes() in train_set - test_set for f in frames)


@pytest.mark.parametrize(
  'name, overrides, match',
  [
    (
      'lstm',
      dict(data__name='digit_sequences'),
      r'model.input_shape=\(28, 28, 1\) but the data gives examples of shape \(4, 28, 28, 1\)',
    ),
    (
      'cnn_rnn',
      dict(data__seq_len=5),
      r'model.input_shape=\(4, 28, 28, 1\) .* sequences of shape \(5, 28, 28, 1\)',
    ),
  ],
)
def test_shapes_the_model_cannot_take_fail_in_one_line_before_compute(
  make_config, name, overrides, match
):
  config = make_config(name, **overrides)
  if 'seq_len' not in config.data:  # digit_sequences' own keys, as configs/cnn_rnn.py adds them
    config.data.update(sequences.config())
  with pytest.raises(config_lib.ConfigError, match=match) as e:
    experiment.setup(config, '/nonexistent/never-written')
  assert '\n' not in str(e.value)


def test_lstm_refuses_colour_images_of_another_size(make_config, tmp_path):
  import tensorflow_datasets as tfds

  config = make_config(
    'lstm', data__name='cifar10', data__download=True, data__tfds_dir=str(tmp_path)
  )
  mock = tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE)
  bad_shape = r'input_shape=\(28, 28, 1\) .* shape \(32, 32, 3\)'
  with mock, pytest.raises(config_lib.ConfigError, match=bad_shape):
    experiment.setup(config, str(tmp_path / 'run'))


def test_tokenizer_is_deterministic_and_maps_unknown_words_to_one():
  from jaxvision.data import text

  texts = [b'The film was great, GREAT fun.', b"the plot wasn't great", b'a b the']
  vocab = text.build_vocab(texts, size=6)
  assert vocab == {'great': 2, 'the': 3, 'a': 4, 'b': 5}  # by count, then alphabetically
  assert text.build_vocab(list(reversed(texts)), size=6) == vocab
  np.testing.assert_array_equal(text.encode(b'The great unseen film', vocab, 6), [3, 2, 1, 1, 0, 0])
  np.testing.assert_array_equal(text.encode('great ' * 10, vocab, 3), [2, 2, 2])


def test_lstm_imdb_preset_trains_on_mock_text(make_config, tmp_path):
  import tensorflow_datasets as tfds

  config = make_config(
    'lstm',
    'imdb',
    data__download=True,
    data__tfds_dir=str(tmp_path / 'tfds'),
    data__max_len=32,
    model__input_shape=(32,),
    data__vocab_size=100,
    model__vocab_size=100,
    model__hidden=8,
    model__embed_dim=8,
    data__batch_size=16,
    data__eval_batch_size=16,
    train__steps=2,
    train__log_every=1,
    train__eval_every=2,
    train__ckpt_every=2,
  )
  with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
    exp = experiment.setup(config, str(tmp_path / 'run'))
    batch = next(iter(pipeline.eval_batches(config, exp.eval_split)))
    final = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert exp.train_split.input_key == 'tokens' and batch['tokens'].shape == (16, 32)
  assert batch['tokens'].dtype == np.int32 and batch['tokens'].max() < 100
  assert np.isfinite(final['eval/loss'])


def test_digit_sequences_without_their_keys_is_one_line(make_config, tmp_path):
  config = make_config('lstm', data__name='digit_sequences')
  with pytest.raises(pipeline.DataError, match='data.name=digit_sequences needs data.seq_len') as e:
    experiment.setup(config, str(tmp_path / 'w'))
  assert '\n' not in str(e.value) and not (tmp_path / 'w').exists()
