"""
Driving: what a vehicle does with its inputs, free of rclpy and of ROS messages.

``observation`` (the DESIGN §5 observation and action mapping every backend shares),
``actor_core`` (the policy node's logic as plain calls: observation assembly, route continuity,
feedback pairing, transitions, watchdog), ``pairing`` (which pose answers which frame),
``responder`` (act, publish or hold), ``policy`` (the deployable actor from any checkpoint kind),
``policy_loader`` (loads on a worker thread, staged and swapped), ``policy_diagnostics`` (the
node's health as level, message and values) and ``classical_controller`` (pure pursuit + PID).
It may import ``learning`` (the networks a policy runs) and ``formats`` (the files a policy is
read from); never ``ros``, ``apps``, ``sim`` or ``carla``.
"""
