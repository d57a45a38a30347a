"""What the tutorial's modules and scripts stand on: everything but the model.

The tutorial is its five files at the top of the checkout (cifar10_input.py,
cifar10.py, cifar10_train.py, cifar10_multi_gpu_train.py, cifar10_eval.py)
and the scripts beside them. This package holds what they use that is not
the model itself, one role a module, and imports nothing of theirs:

- quiet: TensorFlow 1.x imported quietly (`from cifar10_support.quiet import
  tf`): the noise silenced, every real warning kept.
- scripts: how a script runs and stops: one entry point, one-line errors
  (UserError), clean stops on signals.
- params: a run's settings (Params, the tutorial's defaults) and the types
  the model computes in (Precision).
- command_line: the scripts' flags, each defined once, and the Params they
  make.
- data: CIFAR-10's binary layout on disk, and a data set read and checked
  once (DataSet).
- download: the data set fetched, all or nothing, MD5-checked.
- devices: the machine: GPUs, fast bfloat16, the sessions' configuration,
  the devices of a traced step.
- kernels: this project's CPU kernels (lrn_kernel.cc, input_kernel.cc),
  compiled on first use; TensorFlow's ops where they cannot be, or on a GPU.
- lrn: local response normalization, fast: on a CPU in a kernel of its own,
  elsewhere in TensorFlow's ops.
- checkpoints: the newest checkpoint, checked against the model built,
  restored.
- runtime: the training loop: logs, summaries, checkpoints, resume, clean
  stops; distributed workers.
- files: the folders the scripts write: one writer each, every failed write
  said in one line.
- images: image files of your own as CIFAR-10's 32x32 images.
- classifier: a trained model as a function of images (prediction, export).
"""
