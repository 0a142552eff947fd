"""What runs inside an executor process: the task loop (``_tasks``), calls made from inside
tasks (``_subcalls``), a task's private writes (``_isolation``) and shared objects as an
executor loads them (``_objects``).

Imports ``wire`` and the shared utilities; never ``main`` or ``worker`` (the daemon starts
executors as processes and speaks to them over ``wire._pipe``).
"""
