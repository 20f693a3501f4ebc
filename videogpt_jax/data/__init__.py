"""Video data: local TFDS builders (`builders/`), ffmpeg I/O (`video_io`), preprocessing ops and the tf.data
pipeline that yields global sharded batches (`pipeline`). Submodules import TensorFlow; this package does not."""
