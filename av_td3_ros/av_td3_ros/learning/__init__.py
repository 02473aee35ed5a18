"""
Learning: the TD3 learner and what feeds it, free of ROS.

``config`` (every hyperparameter), ``networks`` (CNNs, actor, twin critic), ``td3`` (the update;
it exposes its state as dicts and leaves files to ``formats``), ``replay`` (the frame-deduplicated
buffer), ``rate_limiter`` (samples per insert) and ``learner_loop`` (updates on a thread plus the
checkpoint schedule, shared by the trainer node and ``bag_tool train``). It may import
``driving.observation`` (the observation spec the networks are built for) and ``formats`` (the
learner loop saves checkpoints); never ``ros``, ``apps``, ``sim`` or ``carla``.
"""
