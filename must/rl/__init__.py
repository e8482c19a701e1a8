"""GRPO as its pieces, each usable on its own (stage 4, :mod:`must.stages.grpo`, wires them together):

- :mod:`must.rl.losses`: the loss maths, pure functions on tensors (advantages, clipped surrogate, KL, reduction);
- :mod:`must.rl.policy`: the :class:`~must.rl.policy.Policy` protocol, :class:`~must.rl.policy.TextPolicy`,
  :class:`~must.rl.policy.MusicPolicy`, LoRA adapters on and off;
- :mod:`must.rl.rollouts`: sampled, scored completions and group refill;
- :mod:`must.rl.decoding`: LM decoding with one prefill per prompt, and the log-prob pass;
- :mod:`must.rl.data`: prompt rows, datasets and the endless resumable batches;
- :mod:`must.rl.timing`: where a run's time goes, for benchmarks.
"""
