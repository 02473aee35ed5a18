"""
Formats: the bytes on disk and on the wire, each owned by one module, free of ROS.

``checkpoint`` (the v1 learner checkpoint, legacy import, path policy), ``policy_export`` (the
safetensors actor a vehicle deploys and the PolicyWeights topic carries: tag, writer, reader,
detection), ``atomic_files`` (write to a temp file, fsync, rename) and ``image_cdr`` (a
zero-copy reader of serialized sensor_msgs/Image bytes). It may import ``learning`` (a checkpoint
holds a TD3 and its replay) and ``driving.observation`` (the spec stored with them); never
``ros``, ``apps``, ``sim`` or ``carla``.
"""
