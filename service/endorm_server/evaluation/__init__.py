"""Evaluation of reward models on preference files (``endorm eval``).

- :mod:`endorm_server.evaluation.harness`: file readers (RM-Bench and RewardBench forms) and
  the accuracy arithmetic (per domain / subset, RM-Bench's k x k matrix, easy / normal /
  hard; ties count as wrong);
- :mod:`endorm_server.evaluation.backends`: where scores come from (an in-process
  :class:`~endorm_server.core.scorer.Scorer`, or a running server over HTTP);
- :mod:`endorm_server.evaluation.runner`: rows -> score items -> scores -> accuracies;
- :mod:`endorm_server.evaluation.report`: markdown, JSON and PNG heat maps;
- :mod:`endorm_server.evaluation.command`: the ``endorm eval`` command;
- :mod:`endorm_server.evaluation.demo_task`: the arithmetic task the bundled demo model is
  trained on, and the held-out preference sets it is evaluated on.
"""
