"""Experiment 04: which reward does GRPO hack? (DeepSeek-R1 §2.2.2; DeepSeekMath eq. 3)

GRPO raises the probability of whatever scores above its group's mean, and nothing else: it
optimises the reward you wrote, not the one you meant. R1-Zero used rule-based rewards (accuracy
and format) and no neural reward model for that reason. Here the policy is as small as a policy can
be: one logit for each of five ways to answer an addition prompt (`minids.experiments.STYLES_04`),

    right     <think>ones then tens</think><answer>132</answer>     formatted, correct
    wrong     <think>ones then tens</think><answer>122</answer>     formatted, the carry dropped
    bare      132                                                   correct, no tags
    spray     <think>131 132 133</think><answer>133</answer>        lists neighbours, answers one off
    untagged  <answer>132</answer>                                  correct, no <think>

uniform at the start and trained by GRPO (group advantages, the clipped surrogate) for 100 steps of
16 prompts x 8 samples under each of four rewards: `format` (format_reward), `accuracy`
(accuracy_reward), `contains` (1 when the right answer appears anywhere in the completion: a lazily
written checker), and `format+accuracy` (R1-Zero's). Accuracy (accuracy_reward) is what we want.

1. Predict (fill PREDICTION): the rewards under which the final policy collects nearly full reward
   but answers correctly less than 80% of the time ("hacked").
2. Measure: complete the GRPO step in `measure` (three lines), then run
   `python exercises/experiment_04_grpo_reward_hacking.py` (one to two minutes). Paste MEASURED.
3. Conclude and explain: CONCLUSION is the list of rewards your measurement shows hacked (mean
   accuracy below 0.8). In EXPLANATION, say which styles each hacked reward cannot tell apart, why
   GRPO then has no reason to prefer the correct one, and how R1-Zero's rewards avoid it (and what
   a learned reward model would add to the risk).

`pytest exercises/test_experiment_04_grpo_reward_hacking.py` checks what a machine can; your
teacher reads the explanation.

Points: 6 in all (PREDICTION 1, MEASURED 3, CONCLUSION 1, EXPLANATION 1)
"""

# ruff: noqa: F401, F841  (the names the stub leaves unused are for the lines you write)
import jax
import jax.numpy as jnp

from minids.experiments import (
    _addition_examples,
    completions_04,
    reward_table_04,
    run_experiment,
)
from minids.grpo import clipped_surrogate, group_advantages
from minids.rewards import accuracy_reward

SETTINGS = ("format", "accuracy", "contains", "format+accuracy")


def measure(setting: str, seed: int, steps: int = 100) -> dict[str, float]:
    examples = _addition_examples()  # 64 addition prompts from data/train.jsonl
    rewards = jnp.asarray(reward_table_04(setting, examples))  # (prompts, styles)
    correct = jnp.asarray(
        [[accuracy_reward(ex, c) for c in completions_04(ex)] for ex in examples], jnp.float32
    )
    P, S = rewards.shape
    B, G, lr = 16, 8, 0.5  # prompts per step, samples per prompt, learning rate

    def iteration(logits, key):
        k_prompts, k_samples = jax.random.split(key)
        prompts = jax.random.choice(k_prompts, P, (B,), replace=False)
        styles = jax.random.categorical(k_samples, logits, shape=(B, G))  # (B, G) sampled styles

        def loss(theta):  # one "token" per completion: its style
            logp = jax.nn.log_softmax(theta)[styles].reshape(B * G, 1)
            mask = jnp.ones_like(logp, bool)
            # TODO: the advantages of the group rewards rewards[prompts[:, None], styles] (B, G);
            # the clipped surrogate of logp against old_logp = jax.lax.stop_gradient(logp)
            # (one update per batch: the ratio is 1), with the advantages flattened to (B * G,);
            # return minus its mean (we minimise).
            raise NotImplementedError

        return logits - lr * jax.grad(loss)(logits), None

    keys = jax.random.split(jax.random.key(seed), steps)
    logits, _ = jax.lax.scan(iteration, jnp.zeros(S), keys)
    policy = jax.nn.softmax(logits)
    return {
        "reward": float(jnp.mean(rewards @ policy)),
        "accuracy": float(jnp.mean(correct @ policy)),
    }


PREDICTION = {
    "hacked": None,  # a list of SETTINGS, e.g. ["format"]
}
MEASURED = None  # paste the dict that running this file prints
CONCLUSION = None  # the rewards whose mean final accuracy is below 0.8, e.g. ["format"]
EXPLANATION = """
"""

if __name__ == "__main__":
    run_experiment(measure, SETTINGS)
