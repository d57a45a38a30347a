"""What the speed work must not change: the training step, and the distortions.

The model's training step on a fixed batch, from fixed weights, is pinned by
data/model_step_golden.json: loss, gradients, updated weights and moving
averages. The file was written by this module, run as

    PYTHONPATH=<checkout of commit 7fe0c3d> python tests/test_same_computation.py

on the code before the speed work (tf.nn.lrn, distortions image by image).
"""

import json
import os

import numpy as np
import pytest

import cifar10
import cifar10_input
import helpers
from cifar10_support import lrn
from cifar10_support.quiet import tf

GOLDEN = os.path.join(os.path.dirname(__file__), 'data',
                      'model_step_golden.json')
BATCH = 128
SAMPLES = 16  # Values kept of each tensor, at fixed positions.

# The tutorial's initial scales, for weights drawn here rather than by TF.
_STDDEVS = {'conv1': 5e-2, 'conv2': 5e-2, 'local3': 0.04, 'local4': 0.04,
            'softmax_linear': 1 / 192.0}


def _initial_values(variables):
  rng = np.random.default_rng(1)
  values = {}
  for v in variables:
    layer, kind = v.op.name.split('/')
    shape = v.shape.as_list()
    if kind == 'weights':
      values[v.op.name] = np.clip(rng.normal(0, _STDDEVS[layer], shape),
                                  -2 * _STDDEVS[layer], 2 * _STDDEVS[layer])
    else:
      values[v.op.name] = rng.uniform(0.0, 0.2, shape)
  return {name: value.astype(np.float32) for name, value in values.items()}


def _fingerprint(array):
  """What is kept of a tensor: sums that cannot cancel, and some values."""
  flat = np.asarray(array, dtype=np.float64).ravel()
  positions = np.random.default_rng(2).integers(0, flat.size, SAMPLES)
  return {'shape': list(np.shape(array)), 'sum_abs': float(np.abs(flat).sum()),
          'sum_squares': float((flat ** 2).sum()),
          'values': [float(flat[i]) for i in positions]}


def model_step():
  """One training step of cifar10.train on a fixed batch: fingerprints."""
  rng = np.random.default_rng(0)
  images = rng.normal(0, 1, (BATCH, 24, 24, 3)).astype(np.float32)
  labels = rng.integers(0, 10, BATCH).astype(np.int32)
  with tf.Graph().as_default():
    global_step = tf.train.get_or_create_global_step()
    logits = cifar10.inference(tf.constant(images))
    total_loss = cifar10.loss(logits, tf.constant(labels))
    train_op = cifar10.train(total_loss, global_step)
    variables = tf.trainable_variables()
    gradients = tf.gradients(total_loss, variables)
    by_name = {v.op.name: v for v in tf.global_variables()}
    averages = [by_name[v.op.name + '/ExponentialMovingAverage']
                for v in variables]
    initial = _initial_values(variables)
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      for v, average in zip(variables, averages):
        v.load(initial[v.op.name], sess)
        average.load(initial[v.op.name], sess)
      loss, logit_values, grads = sess.run([total_loss, logits, gradients])
      sess.run(train_op)
      after, averaged = sess.run([variables, averages])
  result = {'loss': float(loss), 'logits': _fingerprint(logit_values)}
  for v, grad, weight, average in zip(variables, grads, after, averaged):
    result[v.op.name] = {'gradient': _fingerprint(grad),
                         'after': _fingerprint(weight),
                         'average': _fingerprint(average)}
  return result


def _assert_close(actual, expected, where):
  assert actual['shape'] == expected['shape'], where
  for key in ['sum_abs', 'sum_squares']:
    assert actual[key] == pytest.approx(expected[key], rel=2e-4), (where, key)
  scale = max(abs(v) for v in expected['values']) or 1.0
  np.testing.assert_allclose(actual['values'], expected['values'], rtol=1e-3,
                             atol=1e-4 * scale, err_msg=where)


def test_the_training_step_computes_what_it_did_before_the_speed_work():
  with open(GOLDEN) as f:
    golden = json.load(f)
  actual = model_step()
  assert actual['loss'] == pytest.approx(golden['loss'], rel=1e-5)
  _assert_close(actual['logits'], golden['logits'], 'logits')
  names = [k for k in golden if '/' in k]
  assert sorted(names) == sorted(k for k in actual if '/' in k)
  for name in names:
    for part in ['gradient', 'after', 'average']:
      _assert_close(actual[name][part], golden[name][part],
                    '%s %s' % (name, part))


@pytest.mark.parametrize('way', helpers.KERNEL_WAYS)
@pytest.mark.parametrize('dtype', [tf.float32, tf.bfloat16])
def test_pool1_and_norm1s_gradient_is_op_by_ops(way, dtype):
  # pool1's and norm1's gradient, written out
  # (cifar10._normalized_max_pool_of_relu: relu's gradient at the maxima,
  # applied by LRN's; with the kernel, in its pass), against the same ops
  # differentiated op by op: the same to the bit, but for the float32
  # biases' gradient, summed at the maxima alone (in another order: to
  # float32's rounding of the sum). Half the values of conv1 are 0 here, and
  # some windows' maxima too (they tie at 0: the gradient must reach no
  # weight through them).
  images = np.random.default_rng(0).normal(size=(8, 24, 24, 3))
  settings = dict(bias=1.0, alpha=0.001 / 9.0, beta=0.75)
  with tf.Graph().as_default() as graph:
    with helpers.built(way, 'Cifar10LrnGrad'):
      cifar10.inference(tf.cast(images.astype(np.float32), dtype),
                        variable_dtype=tf.float32)
      conv1 = graph.get_tensor_by_name('conv1/conv1:0')
      # norm1 as conv2 reads it: the normalization's output with its
      # gradient (tf.custom_gradient's IdentityN).
      norm1, = [consumer.outputs[0] for consumer in
                graph.get_tensor_by_name('norm1:0').consumers()
                if consumer.type == 'IdentityN']
      assert any(op.name.startswith('conv2/') for op in norm1.consumers())
      op_by_op = lrn.local_response_normalization(
          tf.nn.max_pool(conv1, ksize=[1, 3, 3, 1], strides=[1, 2, 2, 1],
                         padding='SAME'), 4, name='op_by_op', **settings)
      upstream = tf.cast(tf.constant(np.random.default_rng(1).normal(
          size=norm1.shape.as_list()).astype(np.float32)), dtype)
      weights_and_biases = [v for v in tf.trainable_variables()
                            if v.op.name.startswith('conv1/')]
      assert [v.op.name for v in weights_and_biases] == ['conv1/weights',
                                                         'conv1/biases']
      gradients = [tf.gradients(normalized * upstream, weights_and_biases)
                   for normalized in [norm1, op_by_op]]
      # The terms the biases' gradient sums, each place's.
      terms = tf.gradients(op_by_op * upstream, conv1.op.inputs[0])[0]
      relu_gradients = [op.name for op in graph.get_operations()
                        if op.type == 'ReluGrad']
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      zeros, pool1, ours, theirs, our_gradients, their_gradients, terms = (
          sess.run([tf.reduce_mean(tf.cast(tf.equal(conv1, 0), tf.float32)),
                    graph.get_tensor_by_name('pool1:0'), norm1, op_by_op] +
                   gradients + [terms]))
  # With the kernel, no pass of relu's gradient of ours (the first
  # tf.gradients' ops); with TensorFlow's ops, one, over pool1's maxima.
  ours_relu_gradients = [name for name in relu_gradients
                         if name.startswith('gradients/')]
  assert len(ours_relu_gradients) == (0 if way == 'fused kernel' else 1)
  assert 0.3 < zeros < 0.7 and np.any(pool1 == 0)
  np.testing.assert_array_equal(ours, theirs)
  for our_gradient, their_gradient in zip(our_gradients, their_gradients):
    assert np.any(our_gradient != 0)
  np.testing.assert_array_equal(our_gradients[0], their_gradients[0])
  if dtype == tf.float32:
    rounding = 2.0 ** -24 * np.sqrt(terms[..., 0].size) * np.abs(
        terms.astype(np.float64)).sum(axis=(0, 1, 2))
    np.testing.assert_array_less(
        np.abs(our_gradients[1] - their_gradients[1]), rounding)
  else:
    np.testing.assert_array_equal(our_gradients[1], their_gradients[1])


@pytest.mark.parametrize('way', helpers.KERNEL_WAYS)
@pytest.mark.parametrize('dtype', [tf.float32, tf.bfloat16])
def test_norm2s_gradient_is_op_by_ops(way, dtype):
  # norm2's gradient, relu's applied by LRN's (cifar10._normalization_of_relu;
  # with the kernel, in its pass), against the same LRN differentiated op by
  # op, relu's gradient after it: the same to the bit. About half the
  # activations are 0, where the gradient must stop.
  rng = np.random.default_rng(6)

  def constant(*shape):
    return tf.cast(tf.constant(rng.normal(size=shape).astype(np.float32)),
                   dtype)

  settings = dict(bias=1.0, alpha=0.001 / 9.0, beta=0.75)
  with tf.Graph().as_default() as graph:
    convolution, biases = constant(8, 12, 12, 64), constant(64)
    upstream = constant(8, 12, 12, 64)
    with helpers.built(way, 'Cifar10LrnGrad'):
      activations = tf.nn.relu(tf.nn.bias_add(convolution, biases))
      ours = cifar10._normalization_of_relu(convolution, biases, activations,
                                            4, name='ours', **settings)
      our_gradients = tf.gradients(ours, [convolution, biases], upstream)
      relu_gradients = [op for op in graph.get_operations()
                        if op.type == 'ReluGrad']
      op_by_op = lrn.local_response_normalization(
          tf.nn.relu(tf.nn.bias_add(convolution, biases)), 4, name='op_by_op',
          **settings)
      their_gradients = tf.gradients(op_by_op, [convolution, biases],
                                     upstream)
    with tf.Session() as sess:
      zeros, forward, their_forward, gradients, expected = sess.run(
          [tf.reduce_mean(tf.cast(tf.equal(activations, 0), tf.float32)),
           ours, op_by_op, our_gradients, their_gradients])
  # With the kernel, no pass of relu's gradient of its own.
  assert len(relu_gradients) == (0 if way == 'fused kernel' else 1)
  assert 0.3 < zeros < 0.7
  np.testing.assert_array_equal(forward, their_forward)
  for gradient, expected_gradient in zip(gradients, expected):
    assert np.any(gradient != 0)
    np.testing.assert_array_equal(gradient, expected_gradient)


@pytest.mark.parametrize('way', helpers.KERNEL_WAYS)
def test_local_response_normalization_is_tf_nn_lrn(way):
  rng = np.random.default_rng(3)
  x_value = (rng.normal(size=(8, 12, 12, 64)) * 3).astype(np.float32)
  upstream = rng.normal(size=x_value.shape).astype(np.float32)
  with tf.Graph().as_default():
    x = tf.constant(x_value)
    with helpers.built(way, 'Cifar10Lrn'):
      ours = lrn.local_response_normalization(x, 4, bias=1.0,
                                              alpha=0.001 / 9.0, beta=0.75,
                                              name='ours')
      other_beta = lrn.local_response_normalization(x, 2, bias=2.0,
                                                    alpha=1e-3, beta=0.5,
                                                    name='other')
    reference = tf.nn.lrn(x, 4, bias=1.0, alpha=0.001 / 9.0, beta=0.75)
    other_reference = tf.nn.lrn(x, 2, bias=2.0, alpha=1e-3, beta=0.5)
    gradients = [tf.gradients(y, x, grad_ys=upstream)[0]
                 for y in [ours, reference, other_beta, other_reference]]
    with tf.Session() as sess:
      values = sess.run([ours, reference, other_beta, other_reference] +
                        gradients)
  np.testing.assert_allclose(values[0], values[1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(values[2], values[3], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(values[4], values[5], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(values[6], values[7], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('dtype', [tf.float32, tf.bfloat16])
@pytest.mark.parametrize('shape, radius', [
    ((3, 5, 7, 64), 4),  # the model's depth and radius, compiled for them
    ((2, 5, 5, 24), 3),  # any other, by the general loops
])
def test_the_kernels_blocks_of_pixels_end_where_the_pixels_do(shape, radius,
                                                              dtype):
  # The kernel goes 16 pixels at a time: 105 and 50 pixels end mid-block.
  # Each pixel, the last ones too, is tf.nn.lrn's.
  rng = np.random.default_rng(5)
  x_value = (rng.normal(size=shape) * 3).astype(np.float32)
  upstream = rng.normal(size=shape).astype(np.float32)
  settings = dict(bias=1.0, alpha=0.001 / 9.0, beta=0.75)
  with tf.Graph().as_default():
    x = tf.constant(x_value)
    with helpers.built('fused kernel', 'Cifar10Lrn'):
      ours = lrn.local_response_normalization(tf.cast(x, dtype), radius,
                                              name='ours', **settings)
    reference = tf.nn.lrn(tf.cast(tf.cast(x, dtype), tf.float32), radius,
                          **settings)
    gradients = [tf.gradients(ours, x, grad_ys=tf.cast(upstream, dtype))[0],
                 tf.gradients(reference, x, grad_ys=upstream)[0]]
    with tf.Session() as sess:
      values = sess.run([tf.cast(ours, tf.float32), reference] + gradients)
  tolerance = 1e-5 if dtype == tf.float32 else 2 ** -7  # bfloat16's rounding
  np.testing.assert_allclose(values[0], values[1], rtol=tolerance, atol=1e-6)
  np.testing.assert_allclose(values[2], values[3], rtol=10 * tolerance,
                             atol=10 * tolerance * np.abs(values[3]).max())


@pytest.mark.parametrize('way', helpers.KERNEL_WAYS)
@pytest.mark.parametrize('activation_scale', [0.5, 3.0, 30.0])
def test_local_response_normalization_in_bfloat16_is_off_by_its_rounding(
    activation_scale, way):
  # Mixed precision's LRN, forward and written-out gradient, against
  # tf.nn.lrn in float32, on ReLU outputs of three scales. Measured: the
  # values and gradients are off by 0.14-0.34% on average (differentiating
  # the ops one by one gave the same, 0.14-0.33%), and the error's part
  # along the true values is at most 0.12%.
  rng = np.random.default_rng(7)
  x_value = (np.maximum(rng.normal(size=(32, 12, 12, 64)), 0) *
             activation_scale).astype(np.float32)
  upstream = (rng.normal(size=x_value.shape) * 1e-3).astype(np.float32)
  with tf.Graph().as_default():
    x = tf.constant(x_value)
    reference = tf.nn.lrn(x, 4, bias=1.0, alpha=0.001 / 9.0, beta=0.75)
    x_bfloat16 = tf.cast(x, tf.bfloat16)
    with helpers.built(way, 'Cifar10Lrn'):
      ours = lrn.local_response_normalization(
          x_bfloat16, 4, bias=1.0, alpha=0.001 / 9.0, beta=0.75, name='ours')
    gradients = [
        tf.gradients(reference, x, grad_ys=upstream)[0],
        tf.cast(tf.gradients(ours, x_bfloat16,
                             grad_ys=tf.cast(upstream, tf.bfloat16))[0],
                tf.float32)]
    with tf.Session() as sess:
      expected, got, expected_gradient, gradient = sess.run(
          [reference, tf.cast(ours, tf.float32)] + gradients)
  for what, want, have in [('values', expected, got),
                           ('gradients', expected_gradient, gradient)]:
    error = have - want
    scale = np.abs(want).mean()
    assert np.abs(error).mean() < 0.01 * scale, what
    # Rounding, not a bias: the error has no part along the true values.
    assert abs((error * want).sum() / (want * want).sum()) < 0.005, what


@pytest.mark.parametrize('way', helpers.KERNEL_WAYS)
@pytest.mark.parametrize('largest', [1.0, 100.0, 1000.0, 10000.0, 65504.0])
def test_local_response_normalization_in_float16_is_finite_to_its_range(
    largest, way):
  # ReLU outputs up to `largest`, one of them at it, up to float16's largest
  # number: no inf or NaN (computed in float16, the squares overflowed from
  # 256 on, and a whole pixel became NaN); the values and the gradient are
  # tf.nn.lrn's in float32 to float16's rounding (1 ulp, 2**-10 relative),
  # for a float16 upstream gradient.
  rng = np.random.default_rng(8)
  x_value = np.minimum(np.maximum(rng.normal(size=(4, 6, 6, 64)), 0) * largest,
                       largest).astype(np.float16)
  x_value[0, 0, 0, 5] = largest
  upstream = rng.normal(size=x_value.shape).astype(np.float16)
  with tf.Graph().as_default():
    x = tf.constant(x_value)
    with helpers.built(way, 'Cifar10Lrn'):
      ours = lrn.local_response_normalization(
          x, 4, bias=1.0, alpha=0.001 / 9.0, beta=0.75, name='ours')
    x32 = tf.constant(x_value.astype(np.float32))
    reference = tf.nn.lrn(x32, 4, bias=1.0, alpha=0.001 / 9.0, beta=0.75)
    gradients = [tf.gradients(ours, x, grad_ys=upstream)[0],
                 tf.gradients(reference, x32,
                              grad_ys=upstream.astype(np.float32))[0]]
    with tf.Session() as sess:
      got, expected, gradient, expected_gradient = sess.run(
          [ours, reference] + gradients)
  assert ours.dtype == tf.float16 and gradient.dtype == np.float16
  for have, want in [(got, expected), (gradient, expected_gradient)]:
    have = have.astype(np.float64)
    assert np.isfinite(have).all()
    # Relative to float16's smallest normal number, for values near 0.
    error = np.abs(have - want) / np.maximum(np.abs(want), 2.0 ** -14)
    assert error.max() <= 2.0 ** -10


@pytest.mark.parametrize('way', helpers.KERNEL_WAYS)
def test_batched_distortions_are_the_per_image_ops(way):
  rng = np.random.default_rng(4)
  count = 8
  images = rng.integers(0, 256, (count, 32, 32, 3)).astype(np.float32)
  images[6] = 7.0  # One value: its standard deviation is 0.
  images[7] = rng.integers(100, 103, (32, 32, 3))  # Hardly any contrast.
  offsets = np.array([[0, 0], [8, 8], [3, 5], [8, 0], [1, 7], [4, 4], [2, 2],
                      [5, 1]], np.int32)
  flips = np.array([False, True, True, False, True, False, True, False])
  deltas = np.array([-63, 62.9, 10.5, 0, -20, 33, 50, -40], np.float32)
  factors = np.array([0.2, 1.79, 1.0, 0.5, 1.3, 0.9, 1.5, 0.2], np.float32)
  with tf.Graph().as_default():
    # From the records' layout; the crops are queued as bytes, the rest is
    # done after the queue.
    records_layout = tf.constant(images.astype(np.uint8).transpose(0, 3, 1, 2))
    with helpers.built(way, 'Cifar10CropAndFlip'):
      crops = cifar10_input.crop_and_flip(records_layout, offsets, flips)
    with helpers.built(way, 'Cifar10AdjustContrastAndStandardize'):
      batched = cifar10_input.adjust_and_standardize(crops, deltas, factors)
    one_by_one = []
    for i in range(count):
      image = tf.image.crop_to_bounding_box(images[i], offsets[i, 0],
                                            offsets[i, 1], 24, 24)
      if flips[i]:
        image = tf.image.flip_left_right(image)
      image = tf.image.adjust_brightness(image, deltas[i])
      image = tf.image.adjust_contrast(image, factors[i])
      one_by_one.append(tf.image.per_image_standardization(image))
    with tf.Session() as sess:
      got, expected = sess.run([batched, tf.stack(one_by_one)])
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_random_distortions_are_drawn_as_the_tutorials_ops_draw_them():
  count = 20000
  with tf.Graph().as_default():
    drawn = cifar10_input.random_crops_and_flips(tf.constant(count))
    drawn.update(cifar10_input.random_brightness_and_contrast(
        tf.constant(count)))
    with tf.Session() as sess:
      drawn = sess.run(drawn)
  # Crop offsets: each of the 9 rows and 9 columns, about equally often.
  for axis in range(2):
    counts = np.bincount(drawn['offsets'][:, axis], minlength=9)
    assert len(counts) == 9
    assert counts.min() > 0.8 * count / 9
  # Rows and columns drawn independently.
  assert abs(np.corrcoef(drawn['offsets'].T)[0, 1]) < 0.05
  assert 0.47 < drawn['flips'].mean() < 0.53
  deltas, factors = drawn['brightness_deltas'], drawn['contrast_factors']
  assert -63 <= deltas.min() < -62 and 62 < deltas.max() < 63
  assert abs(deltas.mean()) < 1.5
  assert 0.2 <= factors.min() < 0.21 and 1.79 < factors.max() < 1.8
  assert abs(factors.mean() - 1.0) < 0.02
  # Each image draws its own.
  assert len(np.unique(deltas)) > 0.99 * count


if __name__ == '__main__':
  os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
  with open(GOLDEN, 'w') as golden_file:
    json.dump(model_step(), golden_file, indent=1, sort_keys=True)
  print('wrote', GOLDEN)
