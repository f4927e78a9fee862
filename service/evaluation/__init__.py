"""Evaluation of reward models on preference files (``endorm eval``).

- :mod:`service.evaluation.harness`: file readers (RM-Bench and RewardBench forms) and
  the accuracy arithmetic (per domain / subset, RM-Bench's k x k matrix, easy / normal /
  hard; ties count as wrong);
- :mod:`service.evaluation.backends`: where scores come from (an in-process
  :class:`~service.scorer.Scorer`, or a running server over HTTP);
- :mod:`service.evaluation.runner`: rows -> score items -> scores -> accuracies;
- :mod:`service.evaluation.report`: markdown, JSON and PNG heat maps;
- :mod:`service.evaluation.command`: the ``endorm eval`` command;
- :mod:`service.evaluation.demo_task`: the arithmetic task the bundled demo model is
  trained on, and the held-out preference sets it is evaluated on.
"""
