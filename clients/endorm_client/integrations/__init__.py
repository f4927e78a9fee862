"""Trainer adapters. Each module imports its trainer's dependencies (torch, trl) lazily, so
``import endorm_client`` never needs them.

* ``endorm_client.integrations.trl``: reward functions for TRL's GRPOTrainer (sync, async).
* ``endorm_client.integrations.openrlhf``: ``reward_func(queries, prompts, labels)`` for
  OpenRLHF's ``--remote_rm_url reward.py`` (auth, retries, failover over ``/get_reward``).
* ``endorm_client.integrations.verl``: ``compute_score`` for verl's custom reward function.
"""
